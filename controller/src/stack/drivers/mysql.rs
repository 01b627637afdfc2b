//! The database layer: MariaDB with Galera 4 as a multi-primary cluster, and HAProxy in
//! front of it, from Debian's packages.

use groundwork_types::ServiceInstanceSpec;

use super::RenderCtx;

pub(super) fn render_mysql(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    Err(format!(
        "{}: the mysql driver is not written yet",
        ctx.field()
    ))
}

pub(super) fn render_haproxy(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    Err(format!(
        "{}: the haproxy driver is not written yet",
        ctx.field()
    ))
}
