//! Join tokens: secrets that admit agents (worker token) and managers (manager token) to a
//! cluster. The first leader of a `shoal server` cluster makes them; they live in the replicated
//! state so that every manager checks them alike.

use crate::store::state::JoinTokens;

/// Compares without an early exit, so the time taken does not reveal a prefix of the token.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

/// Whether an agent presenting `given` may register: the configured token (the embedded
/// cluster's), or either of the cluster's tokens (a manager's own agent uses the manager token).
pub fn admits_agent(given: &str, configured: &str, cluster: Option<&JoinTokens>) -> bool {
    if !configured.is_empty() && token_matches(given, configured) {
        return true;
    }
    cluster.is_some_and(|t| token_matches(given, &t.worker) || token_matches(given, &t.manager))
}

/// Fresh tokens from `random` bytes (at least 32): `SHOAL-W-…` and `SHOAL-M-…`.
pub fn generate(random: &[u8]) -> JoinTokens {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let half = random.len() / 2;
    JoinTokens {
        worker: format!("SHOAL-W-{}", hex(&random[..half])),
        manager: format!("SHOAL-M-{}", hex(&random[half..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn agents_are_admitted_with_the_configured_or_either_cluster_token() {
        let tokens = generate(&[7u8; 32]);
        assert!(tokens.worker.starts_with("SHOAL-W-") && tokens.manager.starts_with("SHOAL-M-"));
        assert!(admits_agent(&tokens.worker, "", Some(&tokens)));
        assert!(admits_agent(&tokens.manager, "", Some(&tokens)));
        assert!(admits_agent("local", "local", None));
        assert!(!admits_agent("", "", Some(&tokens)));
        assert!(!admits_agent("nope", "local", Some(&tokens)));
    }
}
