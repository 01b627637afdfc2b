//! The directory part of the identity layer: OpenLDAP slapd from Debian.

use groundwork_types::ServiceInstanceSpec;

use super::RenderCtx;

pub(super) fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    Err(format!(
        "{}: the openldap driver is not written yet",
        ctx.field()
    ))
}
