//! Monthly cost budgets, for a whole tenant or for one agent.
//!
//! A budget has a monthly limit in micro-dollars and an enforcement: `hard` budgets refuse
//! new messages once the month's spend has reached the limit; `soft` ones never refuse. Both
//! record `BudgetThresholdReached` once per month when the spend crosses the limit, which the
//! relay publishes like every event. The spend itself is not part of this aggregate: it is
//! the sum of the month's billed replies, kept exactly by an inline projection.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The scope of the tenant-wide budget; agent budgets use `agent:<agentId>`.
pub const TENANT_SCOPE: &str = "tenant";

/// The scope of an agent's budget.
pub fn agent_scope(agent_id: &str) -> String {
    // Not `format!`: this runs for every message and every billed reply.
    ["agent:", agent_id].concat()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Refuse messages once the limit is reached.
    Hard,
    /// Only tell (`BudgetThresholdReached`).
    Soft,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetCommand {
    SetBudget {
        scope: String,
        monthly_limit_micros: u64,
        enforcement: Enforcement,
    },
    RemoveBudget,
    /// Records that `month` (`YYYY-MM`) has spent `spent_micros`, at least the limit.
    RecordThresholdReached {
        month: String,
        spent_micros: u64,
    },
}

impl BudgetCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::SetBudget { .. } => "SetBudget",
            Self::RemoveBudget => "RemoveBudget",
            Self::RecordThresholdReached { .. } => "RecordThresholdReached",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum BudgetEvent {
    /// A monthly budget was set (or changed) for the tenant or one agent.
    #[serde(rename_all = "camelCase")]
    BudgetSet {
        scope: String,
        monthly_limit_micros: u64,
        enforcement: Enforcement,
    },
    /// A monthly budget was removed.
    #[serde(rename_all = "camelCase")]
    BudgetRemoved { scope: String },
    /// A month's spend reached a budget's limit.
    #[serde(rename_all = "camelCase")]
    BudgetThresholdReached {
        scope: String,
        month: String,
        monthly_limit_micros: u64,
        spent_micros: u64,
        enforcement: Enforcement,
    },
}

impl DomainEvent for BudgetEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BudgetSet { .. } => "BudgetSet",
            Self::BudgetRemoved { .. } => "BudgetRemoved",
            Self::BudgetThresholdReached { .. } => "BudgetThresholdReached",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for BudgetEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("no budget is set")]
    NotSet,
    #[error("a monthly limit must be more than zero")]
    ZeroLimit,
}

/// A budget, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    scope: Option<String>,
    limit: Option<(u64, Enforcement)>,
    /// `(month, limit)` pairs already told about: one alert per month and limit.
    alerted: BTreeSet<(String, u64)>,
}

impl Budget {
    /// The monthly limit and its enforcement, when a budget is set.
    pub fn limit(&self) -> Option<(u64, Enforcement)> {
        self.limit
    }

    /// Whether the crossing of the current limit in `month` has been recorded.
    pub fn alerted(&self, month: &str) -> bool {
        self.limit
            .is_some_and(|(limit, _)| self.alerted.contains(&(month.to_string(), limit)))
    }
}

impl Aggregate for Budget {
    const TYPE: &'static str = "Budget";
    type Command = BudgetCommand;
    type Event = BudgetEvent;
    type Error = BudgetError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            BudgetCommand::SetBudget {
                scope,
                monthly_limit_micros,
                enforcement,
            } => {
                if monthly_limit_micros == 0 {
                    return Err(BudgetError::ZeroLimit);
                }
                if self.limit != Some((monthly_limit_micros, enforcement)) {
                    let event = BudgetEvent::BudgetSet {
                        scope,
                        monthly_limit_micros,
                        enforcement,
                    };
                    sink.write(event, self).await;
                }
            }
            BudgetCommand::RemoveBudget => {
                let (Some(scope), Some(_)) = (self.scope.clone(), self.limit) else {
                    return Err(BudgetError::NotSet);
                };
                sink.write(BudgetEvent::BudgetRemoved { scope }, self).await;
            }
            BudgetCommand::RecordThresholdReached {
                month,
                spent_micros,
            } => {
                let (Some(scope), Some((limit, enforcement))) = (self.scope.clone(), self.limit)
                else {
                    return Err(BudgetError::NotSet);
                };
                if spent_micros >= limit && !self.alerted(&month) {
                    let event = BudgetEvent::BudgetThresholdReached {
                        scope,
                        month,
                        monthly_limit_micros: limit,
                        spent_micros,
                        enforcement,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BudgetEvent::BudgetSet {
                scope,
                monthly_limit_micros,
                enforcement,
            } => {
                self.scope = Some(scope);
                self.limit = Some((monthly_limit_micros, enforcement));
            }
            BudgetEvent::BudgetRemoved { .. } => self.limit = None,
            BudgetEvent::BudgetThresholdReached {
                month,
                monthly_limit_micros,
                ..
            } => {
                self.alerted.insert((month, monthly_limit_micros));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn set(limit: u64) -> BudgetEvent {
        BudgetEvent::BudgetSet {
            scope: TENANT_SCOPE.into(),
            monthly_limit_micros: limit,
            enforcement: Enforcement::Soft,
        }
    }

    #[test]
    fn the_threshold_is_told_once_per_month_and_limit() {
        let reached = BudgetEvent::BudgetThresholdReached {
            scope: TENANT_SCOPE.into(),
            month: "2026-11".into(),
            monthly_limit_micros: 1000,
            spent_micros: 1200,
            enforcement: Enforcement::Soft,
        };
        TestFramework::<Budget>::with(())
            .given(vec![set(1000)])
            .when(BudgetCommand::RecordThresholdReached {
                month: "2026-11".into(),
                spent_micros: 1200,
            })
            .then_expect_events(vec![reached.clone()]);
        TestFramework::<Budget>::with(())
            .given(vec![set(1000), reached.clone()])
            .when(BudgetCommand::RecordThresholdReached {
                month: "2026-11".into(),
                spent_micros: 1500,
            })
            .then_expect_events(vec![]);
        // A raised limit is told again when it is crossed in turn.
        TestFramework::<Budget>::with(())
            .given(vec![set(1000), reached, set(2000)])
            .when(BudgetCommand::RecordThresholdReached {
                month: "2026-11".into(),
                spent_micros: 1500,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_zero_limit_is_refused() {
        TestFramework::<Budget>::with(())
            .given_no_previous_events()
            .when(BudgetCommand::SetBudget {
                scope: TENANT_SCOPE.into(),
                monthly_limit_micros: 0,
                enforcement: Enforcement::Hard,
            })
            .then_expect_error(BudgetError::ZeroLimit);
    }

    #[test]
    fn a_budget_is_set_changed_only_when_it_differs_and_removed() {
        let set_command = |limit| BudgetCommand::SetBudget {
            scope: TENANT_SCOPE.into(),
            monthly_limit_micros: limit,
            enforcement: Enforcement::Soft,
        };
        TestFramework::<Budget>::with(())
            .given_no_previous_events()
            .when(set_command(1000))
            .then_expect_events(vec![set(1000)]);
        // The same limit again changes nothing.
        TestFramework::<Budget>::with(())
            .given(vec![set(1000)])
            .when(set_command(1000))
            .then_expect_events(vec![]);
        TestFramework::<Budget>::with(())
            .given(vec![set(1000)])
            .when(set_command(2000))
            .then_expect_events(vec![set(2000)]);
        TestFramework::<Budget>::with(())
            .given(vec![set(1000)])
            .when(BudgetCommand::RemoveBudget)
            .then_expect_events(vec![BudgetEvent::BudgetRemoved {
                scope: TENANT_SCOPE.into(),
            }]);
    }

    #[test]
    fn a_zero_limit_and_a_missing_budget_are_refused() {
        TestFramework::<Budget>::with(())
            .given_no_previous_events()
            .when(BudgetCommand::SetBudget {
                scope: TENANT_SCOPE.into(),
                monthly_limit_micros: 0,
                enforcement: Enforcement::Hard,
            })
            .then_expect_error(BudgetError::ZeroLimit);
        TestFramework::<Budget>::with(())
            .given_no_previous_events()
            .when(BudgetCommand::RemoveBudget)
            .then_expect_error(BudgetError::NotSet);
        TestFramework::<Budget>::with(())
            .given(vec![
                set(1000),
                BudgetEvent::BudgetRemoved {
                    scope: TENANT_SCOPE.into(),
                },
            ])
            .when(BudgetCommand::RecordThresholdReached {
                month: "2026-11".into(),
                spent_micros: 5000,
            })
            .then_expect_error(BudgetError::NotSet);
    }
}
