//! What a failed produce means: Kafka's error codes sorted into retryable (the client gets
//! UNAVAILABLE and may send again) and permanent (the record can never be stored as sent: the
//! client gets the reason, and the spool parks it instead of retrying for ever), and what the
//! sink must do besides answering (rebuild the producer after fatal or fencing errors).
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;
use crate::core::error::Error;

/// What the sink must do about a failed produce, besides answering the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Nothing: a later attempt may succeed as things are.
    None,
    /// Our configuration or permissions are wrong; an operator must act on this hint.
    FixConfig(&'static str),
    /// The broker refused the producer's id, epoch or sequence: rebuild after
    /// `FENCED_REBUILD_THRESHOLD` of these in a row.
    Fenced,
    /// The producer is unusable: rebuild it now.
    Rebuild,
}

/// What a librdkafka error code means for a produce, in words the rest of the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// May succeed if sent again as it is (a broker away, a leader moving, a full queue).
    Retryable,
    /// The record can never be stored as it is (too large, invalid, refused by a policy).
    TooLarge,
    Refused,
    /// Every record fails alike until the configuration changes (a codec or version the
    /// broker does not support): retried, never given up on record by record sooner than a
    /// passing error would be.
    Misconfigured,
    /// The topic is not there (auto-creation is off): the configuration must change.
    MissingTopic,
    /// Credentials or ACLs: the configuration must change.
    NotAuthorized,
    /// The broker refused the producer's id, epoch or sequence.
    Fenced,
    /// The producer is unusable.
    Fatal,
}

/// The kind of each code. librdkafka answers `is_retriable` / `is_fatal` only on the
/// `rd_kafka_error_t` objects of its newer APIs; a delivery report carries a bare code, so
/// this table follows the classification librdkafka applies to produce errors and Kafka's
/// protocol (the `RetriableException` codes). A code not named here is retryable: the
/// forwarder still gives it up after `spool.give_up_after`, so nothing waits on it for ever.
pub(super) fn kind_of(code: RDKafkaErrorCode) -> Kind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => Kind::TooLarge,
        C::InvalidRequiredAcks
        | C::UnsupportedVersion
        | C::UnsupportedCompressionType
        | C::InvalidConfig => Kind::Misconfigured,
        C::InvalidRecord
        | C::PolicyViolation
        | C::InvalidTopic
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::InvalidRequest
        | C::BadMessage
        | C::BadCompression
        | C::InvalidArgument
        | C::InvalidType
        | C::InvalidDifferentRecord
        | C::KeySerialization
        | C::ValueSerialization => Kind::Refused,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            Kind::MissingTopic
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::Authentication => Kind::NotAuthorized,
        C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::Fenced => Kind::Fenced,
        C::Fatal | C::GaplessGuarantee => Kind::Fatal,
        _ => Kind::Retryable,
    }
}

/// The client's answer to a Kafka error and what the sink must do about it. Pure: it reads
/// and changes no state, so every mapping is testable on its own; [`KafkaSink::failed`] acts.
pub(super) fn classify(err: &KafkaError, topic: &str, config: &KafkaConfig) -> (Error, Recovery) {
    let Some(code) = err.rdkafka_error_code() else {
        return (Error::unavailable(format!("kafka: {err}")), Recovery::None);
    };
    match kind_of(code) {
        Kind::Retryable if code == RDKafkaErrorCode::QueueFull => (
            Error::unavailable(
                "the Kafka producer queue is full (kafka.queue_max_messages); retry shortly",
            ),
            Recovery::None,
        ),
        Kind::Retryable => (
            Error::unavailable(format!("Kafka did not store the event: {code}")),
            Recovery::None,
        ),
        Kind::TooLarge => (
            Error::TooLarge {
                what: "the event as a Kafka record".into(),
                limit: u64::from(config.message_max_bytes),
                size: None,
            },
            Recovery::None,
        ),
        Kind::Refused => (
            Error::Internal(format!("Kafka refused the record for good: {code}")),
            Recovery::FixConfig(
                "Kafka refuses these records for good: check the topic's configuration (policies, compaction needs a key) and kafka.* settings",
            ),
        ),
        Kind::Misconfigured => (
            Error::unavailable(format!("Kafka refused the producer's settings: {code}")),
            Recovery::FixConfig(
                "Kafka refuses every record with these settings: check kafka.compression, kafka.required_acks and kafka.librdkafka against the brokers",
            ),
        ),
        Kind::MissingTopic => (
            Error::Internal(format!("Kafka topic `{topic}` does not exist")),
            Recovery::FixConfig(
                "Kafka topic does not exist: create it (auto-creation is off) or fix kafka.topic / types.entries[].topic",
            ),
        ),
        Kind::NotAuthorized => (
            Error::Internal(format!("not authorized to write to Kafka: {code}")),
            Recovery::FixConfig(
                "the gateway is not allowed to write to Kafka: fix the credentials or ACLs",
            ),
        ),
        Kind::Fenced => (
            Error::unavailable(format!(
                "the Kafka producer is being reset after {code}; retry"
            )),
            Recovery::Fenced,
        ),
        Kind::Fatal => (
            Error::unavailable(format!(
                "the Kafka producer is being reset after {code}; retry"
            )),
            Recovery::Rebuild,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a librdkafka error code, the client's gRPC-level answer and the recovery.
    #[test]
    fn classification_is_a_pure_table() {
        use RDKafkaErrorCode as C;
        let config = KafkaConfig::default();
        let rows: &[(C, &str, Recovery)] = &[
            (C::QueueFull, "unavailable", Recovery::None),
            (C::MessageSizeTooLarge, "too_large", Recovery::None),
            (C::MessageTimedOut, "unavailable", Recovery::None),
            (C::BrokerTransportFailure, "unavailable", Recovery::None),
            (C::ProducerFenced, "unavailable", Recovery::Fenced),
            (C::InvalidProducerEpoch, "unavailable", Recovery::Fenced),
            (C::OutOfOrderSequenceNumber, "unavailable", Recovery::Fenced),
            (C::Fatal, "unavailable", Recovery::Rebuild),
        ];
        for (code, reason, recovery) in rows {
            let err = KafkaError::MessageProduction(*code);
            let (e, r) = classify(&err, "t", &config);
            assert_eq!((e.reason(), r), (*reason, *recovery), "{code:?}");
        }
        for code in [
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            let (e, r) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert_eq!(e.reason(), "internal", "{code:?}");
            assert!(matches!(r, Recovery::FixConfig(_)), "{code:?}");
        }
        // Classifying twice gives the same answer: nothing was counted in between.
        let fenced = KafkaError::MessageProduction(C::ProducerFenced);
        assert_eq!(
            classify(&fenced, "t", &config).1,
            classify(&fenced, "t", &config).1
        );
    }

    /// Errors that can never succeed as they are must not be retryable: they were, so one
    /// such record stalled the spool until `max_age` refused everything.
    #[test]
    fn permanent_kafka_errors_are_not_retryable() {
        use RDKafkaErrorCode as C;
        let config = KafkaConfig::default();
        for code in [
            C::InvalidRecord,
            C::PolicyViolation,
            C::MessageBatchTooLarge,
            C::MessageSizeTooLarge,
            C::InvalidTopic,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::InvalidTimestamp,
            C::UnsupportedForMessageFormat,
            C::TopicAuthorizationFailed,
        ] {
            let (e, _) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert!(!e.is_retryable(), "{code:?} must not be retried for ever");
        }
        for code in [
            C::QueueFull,
            C::MessageTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::RequestTimedOut,
            C::NetworkException,
            C::KafkaStorageError,
            C::AllBrokersDown,
        ] {
            let (e, _) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert!(e.is_retryable(), "{code:?} passes and is retried");
        }
    }
}
