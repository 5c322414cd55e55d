//! What to do with a failed produce: the one place that decides between "wait and try again"
//! and "this record will never go through, set it aside".

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// librdkafka's local queue is full: back off briefly and enqueue again.
    QueueFull,
    /// The broker refuses this record and would refuse it again: dead-letter it.
    Permanent,
    /// The producer instance is unusable (idempotence state lost): build a new one and
    /// re-produce everything still pending.
    Fatal,
    /// Anything else (broker down, timeouts, leader moves, missing topic, auth not ready yet):
    /// retry with backoff, forever. Unknown codes land here too, because wrongly retrying costs
    /// time while wrongly dead-lettering loses the event from the stream.
    Transient,
}

pub fn classify(e: &KafkaError) -> ErrorClass {
    match e {
        // The producer was dropped under a pending delivery (e.g. replaced after a fatal error).
        KafkaError::Canceled => ErrorClass::Transient,
        _ => e
            .rdkafka_error_code()
            .map_or(ErrorClass::Transient, classify_code),
    }
}

pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull => ErrorClass::QueueFull,
        C::Fatal | C::ProducerFenced | C::InvalidProducerEpoch | C::GaplessGuarantee => ErrorClass::Fatal,
        // Local checks (message.max.bytes) and broker checks of the record itself.
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::InvalidTopic
        | C::BadMessage
        | C::InvalidArgument
        | C::KeySerialization
        | C::ValueSerialization
        // Authorization: retrying does not grant the ACL.
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => ErrorClass::Permanent,
        // MessageTimedOut (message.timeout.ms), transport failures, AllBrokersDown,
        // UnknownTopic(OrPartition) (the topic may be created later), NotEnoughReplicas, ...
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as C;

    #[test]
    fn classification() {
        for (code, class) in [
            (C::QueueFull, ErrorClass::QueueFull),
            (C::MessageSizeTooLarge, ErrorClass::Permanent),
            (C::TopicAuthorizationFailed, ErrorClass::Permanent),
            (C::ClusterAuthorizationFailed, ErrorClass::Permanent),
            (C::InvalidRecord, ErrorClass::Permanent),
            (C::Fatal, ErrorClass::Fatal),
            (C::MessageTimedOut, ErrorClass::Transient),
            (C::AllBrokersDown, ErrorClass::Transient),
            (C::BrokerTransportFailure, ErrorClass::Transient),
            (C::RequestTimedOut, ErrorClass::Transient),
            (C::NotEnoughReplicas, ErrorClass::Transient),
            (C::NotLeaderForPartition, ErrorClass::Transient),
            (C::UnknownTopicOrPartition, ErrorClass::Transient),
            (C::UnknownTopic, ErrorClass::Transient),
            (C::PurgeInflight, ErrorClass::Transient),
            (C::PurgeQueue, ErrorClass::Transient),
        ] {
            assert_eq!(classify_code(code), class, "{code:?}");
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                class,
                "{code:?}"
            );
        }
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Transient);
    }
}
