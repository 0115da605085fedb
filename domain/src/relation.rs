//! Relations: typed, directed, many-to-many edges between records, declared on the type they
//! start from (`Schema::relations`).
//!
//! The edges that start at a record are its [`Links`]: one stream per record. Linking adds
//! an edge there; deleting the record closes it (removing every edge it still has), and a
//! closed record takes no new edges. The record an edge points at lists the edge in its
//! [`crate::constraints::References`] stream (as a referrer with `relation` set), in the same
//! commit, so that deleting that record either removes the edges (`onDelete: unlink`) or is
//! refused (`restrict`), and never leaves an edge pointing at nothing.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::names::{EntityId, EntityTypeName};

/// At most this many edges start at one record (all its relations together): deleting a
/// record removes them all in one commit.
pub const MAX_LINKS_PER_RECORD: usize = 10_000;
/// At most this many references and relations point at one record: each one is an entry of
/// its `References` stream, which deleting the record reads and links to it load.
pub const MAX_INCOMING_PER_RECORD: usize = 10_000;

/// One edge, as its events carry it: self-contained, so that a projection needs nothing
/// else to apply it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub source_type: EntityTypeName,
    pub source_id: EntityId,
    pub relation: String,
    pub target_type: EntityTypeName,
    pub target_id: EntityId,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LinksCommand {
    /// Add the edge. The caller has checked that both records exist and that the relation is
    /// declared with the edge's target type.
    Link { edge: Edge },
    /// Remove the edge, if the record has it.
    Unlink {
        relation: String,
        target_id: EntityId,
    },
    /// The record is being deleted: remove every edge and take no more.
    Close {
        source_type: EntityTypeName,
        source_id: EntityId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum LinksEvent {
    /// A relation edge was linked from the source record to the target record.
    #[serde(rename_all = "camelCase")]
    RelationLinked {
        #[serde(flatten)]
        edge: Edge,
    },
    /// A relation edge was unlinked.
    #[serde(rename_all = "camelCase")]
    RelationUnlinked {
        #[serde(flatten)]
        edge: Edge,
    },
    /// The source record was deleted: its relations are gone.
    #[serde(rename_all = "camelCase")]
    RelationsClosed {
        source_type: EntityTypeName,
        source_id: EntityId,
    },
}

impl DomainEvent for LinksEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RelationLinked { .. } => "RelationLinked",
            Self::RelationUnlinked { .. } => "RelationUnlinked",
            Self::RelationsClosed { .. } => "RelationsClosed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for LinksEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinksError {
    #[error("the record has been deleted")]
    SourceDeleted,
    #[error("a record has at most {MAX_LINKS_PER_RECORD} relations")]
    TooMany,
}

/// The edges that start at one record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Links {
    edges: BTreeSet<Edge>,
    closed: bool,
}

impl Links {
    pub fn edges(&self) -> &BTreeSet<Edge> {
        &self.edges
    }

    /// The record's edge of `relation` to `target_id`, if it has one.
    pub fn edge(&self, relation: &str, target_id: &EntityId) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| e.relation == relation && e.target_id == *target_id)
    }
}

impl Aggregate for Links {
    const TYPE: &'static str = "Links";
    type Command = LinksCommand;
    type Event = LinksEvent;
    type Error = LinksError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            LinksCommand::Link { edge } => {
                if self.closed {
                    return Err(LinksError::SourceDeleted);
                }
                if !self.edges.contains(&edge) {
                    if self.edges.len() >= MAX_LINKS_PER_RECORD {
                        return Err(LinksError::TooMany);
                    }
                    sink.write(LinksEvent::RelationLinked { edge }, self).await;
                }
            }
            LinksCommand::Unlink {
                relation,
                target_id,
            } => {
                if let Some(edge) = self.edge(&relation, &target_id).cloned() {
                    sink.write(LinksEvent::RelationUnlinked { edge }, self)
                        .await;
                }
            }
            LinksCommand::Close {
                source_type,
                source_id,
            } => {
                if !self.closed {
                    for edge in self.edges.clone() {
                        sink.write(LinksEvent::RelationUnlinked { edge }, self)
                            .await;
                    }
                    let event = LinksEvent::RelationsClosed {
                        source_type,
                        source_id,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            LinksEvent::RelationLinked { edge } => {
                self.edges.insert(edge);
            }
            LinksEvent::RelationUnlinked { edge } => {
                self.edges.remove(&edge);
            }
            LinksEvent::RelationsClosed { .. } => {
                self.edges.clear();
                self.closed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn edge(target: &str) -> Edge {
        Edge {
            source_type: EntityTypeName::parse("projects").unwrap(),
            source_id: EntityId::parse("p1").unwrap(),
            relation: "members".into(),
            target_type: EntityTypeName::parse("users").unwrap(),
            target_id: EntityId::parse(target).unwrap(),
        }
    }

    #[test]
    fn linking_twice_records_one_edge() {
        TestFramework::<Links>::with(())
            .given(vec![LinksEvent::RelationLinked { edge: edge("u1") }])
            .when(LinksCommand::Link { edge: edge("u1") })
            .then_expect_events(vec![]);
    }

    #[test]
    fn closing_removes_every_edge_and_a_closed_record_takes_none() {
        TestFramework::<Links>::with(())
            .given(vec![
                LinksEvent::RelationLinked { edge: edge("u1") },
                LinksEvent::RelationLinked { edge: edge("u2") },
            ])
            .when(LinksCommand::Close {
                source_type: edge("u1").source_type,
                source_id: edge("u1").source_id,
            })
            .then_expect_events(vec![
                LinksEvent::RelationUnlinked { edge: edge("u1") },
                LinksEvent::RelationUnlinked { edge: edge("u2") },
                LinksEvent::RelationsClosed {
                    source_type: edge("u1").source_type,
                    source_id: edge("u1").source_id,
                },
            ]);
        TestFramework::<Links>::with(())
            .given(vec![LinksEvent::RelationsClosed {
                source_type: edge("u1").source_type,
                source_id: edge("u1").source_id,
            }])
            .when(LinksCommand::Link { edge: edge("u1") })
            .then_expect_error(LinksError::SourceDeleted);
    }

    #[test]
    fn unlinking_an_edge_the_record_lacks_changes_nothing() {
        TestFramework::<Links>::with(())
            .given(vec![LinksEvent::RelationLinked { edge: edge("u1") }])
            .when(LinksCommand::Unlink {
                relation: "members".into(),
                target_id: EntityId::parse("u2").unwrap(),
            })
            .then_expect_events(vec![]);
    }
}
