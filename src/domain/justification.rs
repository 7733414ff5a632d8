//! Why a person opens or erases data: a reason, and a ticket where one is given. Both are
//! recorded (in the audit log, or in each erasure receipt) with what was done.

/// A reason that says something and an optional ticket, each trimmed; a blank ticket is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Justification {
    reason: String,
    ticket: Option<String>,
}

/// The reason was missing or blank. `recorded` says where it would have been recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--reason must say why; it is recorded {recorded}")]
pub struct BlankReason {
    pub recorded: &'static str,
}

impl Justification {
    /// `recorded` names where the reason goes ("in the audit log"), for the error.
    pub fn parse(
        reason: &str,
        ticket: Option<&str>,
        recorded: &'static str,
    ) -> Result<Self, BlankReason> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(BlankReason { recorded });
        }
        Ok(Self {
            reason: reason.to_owned(),
            ticket: ticket
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn ticket(&self) -> Option<&str> {
        self.ticket.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_and_ticket_are_trimmed_and_a_blank_ticket_is_none() {
        let j = Justification::parse(" audit ", Some("  "), "in the audit log").unwrap();
        assert_eq!((j.reason(), j.ticket()), ("audit", None));
        let j = Justification::parse("audit", Some(" T-1 "), "in the audit log").unwrap();
        assert_eq!(j.ticket(), Some("T-1"));
    }

    #[test]
    fn a_blank_reason_is_refused_naming_where_it_goes() {
        let err = Justification::parse(" \t", None, "in each erasure receipt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--reason must say why; it is recorded in each erasure receipt"
        );
    }
}
