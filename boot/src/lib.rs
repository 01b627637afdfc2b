//! Groundwork's boot plane: the DHCP server that answers machines on boot networks (TFTP and
//! HTTP/iPXE come next, in this crate).

pub mod dhcp;
