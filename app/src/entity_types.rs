//! Rules about a tenant's entity types that a single type's aggregate cannot see: the types a
//! schema references, and the tenant's index budget.

use domain::entity_type::Schema;
use domain::names::{EntityTypeName, TenantId};
use eventlog::EventLog;
use projections::entity_types as read_model;

use crate::entity_writes::load_type;
use crate::error::{Error, FieldError};
use crate::state::App;

/// The types `schema` references that the tenant has not defined (the type itself aside),
/// read from the log: what a define or change command must be told is missing.
pub async fn missing_references(
    log: &EventLog,
    tenant: &TenantId,
    name: &EntityTypeName,
    schema: &Schema,
) -> Result<Vec<EntityTypeName>, Error> {
    let mut missing = Vec::new();
    for target in schema.referenced_types() {
        if target == name || missing.contains(target) {
            continue;
        }
        if !load_type(log, tenant, target).await?.aggregate.exists() {
            missing.push(target.clone());
        }
    }
    Ok(missing)
}

/// Refuses schemas that would take the tenant's entity types over
/// `GATEWAY_MAX_INDEXED_FIELDS_PER_TENANT` distinct indexes: indexes live on the table every
/// tenant shares, and each one costs every write. `types` are the schemas about to be defined
/// or changed; the tenant's other types are counted from the read model once it has every
/// type committed so far (two requests at the same moment may pass it together).
pub async fn check_index_budget(
    state: &App,
    tenant: &TenantId,
    types: &[(&EntityTypeName, &Schema)],
) -> Result<(), Error> {
    let backend = state.log.db().backend();
    let limit = state.settings.max_indexed_fields_per_tenant;
    let mut used: std::collections::BTreeSet<String> = types
        .iter()
        .flat_map(|(_, schema)| read_model::index_names(backend, schema))
        .collect();
    if used.is_empty() {
        return Ok(());
    }
    let committed = state.log.last_committed().await?;
    projections::progress::wait_until(
        &state.log,
        &state.progress,
        read_model::NAME,
        committed,
        state.settings.consistency_wait(),
    )
    .await?;
    for other in read_model::list(state.log.db(), tenant.as_str()).await? {
        if !types.iter().any(|(name, _)| name.as_str() == other.name) {
            used.extend(read_model::index_names(backend, &other.schema));
        }
    }
    if used.len() > limit {
        return Err(Error::Validation(vec![FieldError {
            field: "fields".into(),
            message: format!(
                "the tenant's entity types would need {} indexes (indexed or unique fields); at most {limit} are allowed",
                used.len()
            ),
        }]));
    }
    Ok(())
}
