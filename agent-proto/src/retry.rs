//! The requester's retransmission schedule.
//!
//! A requester sends a request, waits for the response with the same `request_id`, and
//! if none comes re-seals the SAME message with the SAME `request_id` but a FRESH nonce
//! and timestamp (a byte-identical resend would be dropped by the responder's replay
//! guard). Waits double from 100 ms; after [`MAX_TRIES`] sends and the last wait it
//! gives up. The responder answers repeats from its [`ReplyCache`](crate::ReplyCache).
//!
//! ```text
//! try:    1        2        3        4         5
//! sent:   0 ms     100 ms   300 ms   700 ms    1500 ms   give up at 3100 ms
//! wait:   100      200      400      800       1600
//! ```
//!
//! Pure functions: the caller owns the clock and the timers.

/// Sends per request, the first included.
pub const MAX_TRIES: u32 = 5;
/// Wait after the first send.
pub const FIRST_TIMEOUT_MS: u64 = 100;
/// From the first send until the requester gives up: the sum of all waits.
pub const GIVE_UP_AFTER_MS: u64 = FIRST_TIMEOUT_MS * ((1 << MAX_TRIES) - 1);

/// How long to wait for the response after send number `attempt` (0 = first send):
/// `100 << attempt` ms, or `None` when `attempt` is past the last try.
pub fn reply_timeout_ms(attempt: u32) -> Option<u64> {
    (attempt < MAX_TRIES).then(|| FIRST_TIMEOUT_MS << attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_for_five_tries() {
        let waits: Vec<u64> = (0..=MAX_TRIES).filter_map(reply_timeout_ms).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600]);
        assert_eq!(waits.iter().sum::<u64>(), GIVE_UP_AFTER_MS);
        assert_eq!(GIVE_UP_AFTER_MS, 3100);
        assert_eq!(reply_timeout_ms(u32::MAX), None);
    }
}
