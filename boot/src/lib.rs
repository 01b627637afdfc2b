//! Groundwork's boot plane: DHCP for boot networks, TFTP for the first iPXE stage, and HTTP
//! for iPXE scripts, kernels, ramdisks and images.

pub mod dhcp;
pub mod files;
pub mod http;
pub mod tftp;
