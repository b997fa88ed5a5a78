//! Mapping rdkafka errors into `mq_core::Error`.

use mq_core::Error;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Maps `err`, raised while doing `operation`.
pub(crate) fn map(err: KafkaError, operation: &str, endpoint: &str) -> Error {
    let code = err.rdkafka_error_code();
    let text = err.to_string();
    if matches!(
        code,
        Some(RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication)
    ) {
        return Error::Auth {
            backend: "kafka",
            endpoint: endpoint.to_string(),
            reason: "the brokers refused the credentials".into(),
        };
    }
    if let KafkaError::ClientConfig(_, description, key, _) = &err {
        // The value is not shown: it may be a secret.
        return Error::InvalidOption {
            backend: "kafka",
            option: format!("rdkafka.{key}"),
            reason: description.clone(),
        };
    }
    if let KafkaError::ClientCreation(reason) = &err {
        // librdkafka names the property it does not know.
        return Error::InvalidOption {
            backend: "kafka",
            option: "rdkafka.*".into(),
            reason: reason.clone(),
        };
    }
    let transient = matches!(
        code,
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::OperationTimedOut
        )
    );
    if transient {
        return Error::Connection {
            backend: "kafka",
            endpoint: endpoint.to_string(),
            reason: format!("{operation}: {text}"),
            source: Some(Box::new(err)),
        };
    }
    Error::Backend {
        backend: "kafka",
        operation: operation.to_string(),
        reason: text,
        retryable: false,
        source: Some(Box::new(err)),
    }
}
