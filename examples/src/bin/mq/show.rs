//! How a message is printed: one line of text, or one JSON object.

use base64::Engine as _;
use mq_core::Message;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One line per message: id, key, attempt, headers, payload (as text
    /// when it is UTF-8, as `hex:...` otherwise).
    Text,
    /// One JSON object per line; the payload as `payload` (UTF-8) or
    /// `payload_base64`.
    Json,
}

/// `message` (delivered on `topic`, attempt `attempt`) as one line.
pub(crate) fn line(format: Format, topic: &str, message: &Message, attempt: Option<u32>) -> String {
    match format {
        Format::Text => {
            let mut out = format!("id={} key={}", message.id, message.key.as_deref().unwrap_or("-"));
            if let Some(attempt) = attempt {
                out.push_str(&format!(" attempt={attempt}"));
            }
            if !message.headers.is_empty() {
                let mut headers: Vec<_> = message.headers.iter().collect();
                headers.sort();
                let shown: Vec<String> = headers
                    .into_iter()
                    .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
                    .collect();
                out.push_str(&format!(" [{}]", shown.join(", ")));
            }
            out.push(' ');
            match std::str::from_utf8(&message.payload) {
                Ok(text) => out.push_str(&escape(text)),
                Err(_) => {
                    out.push_str("hex:");
                    for b in message.payload.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
            out
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = message
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let mut object = serde_json::json!({
                "topic": topic,
                "id": message.id,
                "key": message.key,
                "headers": headers,
                "timestamp_ms": message.timestamp_millis(),
            });
            if let Some(attempt) = attempt {
                object["attempt"] = attempt.into();
            }
            match std::str::from_utf8(&message.payload) {
                Ok(text) => object["payload"] = text.into(),
                Err(_) => {
                    object["payload_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(&message.payload)
                        .into()
                }
            }
            object.to_string()
        }
    }
}

/// `text` with control characters escaped, so that one message stays one line.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_line_and_binary_is_hex() {
        let m = Message::new("a\nb").with_key("k").with_header("h", "v 1");
        let shown = line(Format::Text, "t", &m, Some(2));
        assert_eq!(shown, format!("id={} key=k attempt=2 [h=v 1] a\\nb", m.id));
        let bin = Message::new(vec![0u8, 0xff, 0x10]);
        assert!(line(Format::Text, "t", &bin, None).ends_with(" key=- hex:00ff10"));
        let json: serde_json::Value =
            serde_json::from_str(&line(Format::Json, "t", &bin, None)).unwrap_or_default();
        assert_eq!(json["payload_base64"], "AP8Q");
        assert!(json.get("payload").is_none());
    }
}
