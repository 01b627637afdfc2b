//! IPMI 2.0 over LAN.

pub mod client;
pub mod sim;
pub mod wire;

use futures::future::BoxFuture;

pub use client::{IpmiConfig, Session};
pub use wire::CipherSuite;

use crate::{Bmc, BmcError, BmcInfo, BmcInventory, BootTarget, Power, PowerAction};

/// A BMC reached over IPMI LAN. Each operation opens a session, runs its commands and closes
/// the session, so nothing is held between operations (BMCs have few session slots).
#[derive(Clone, Debug)]
pub struct IpmiBmc {
    pub cfg: IpmiConfig,
}

impl IpmiBmc {
    pub fn new(cfg: IpmiConfig) -> Self {
        IpmiBmc { cfg }
    }

    async fn with_session<T>(
        &self,
        f: impl AsyncFnOnce(&mut Session) -> Result<T, BmcError>,
    ) -> Result<T, BmcError> {
        let mut s = Session::open(&self.cfg).await?;
        let r = f(&mut s).await;
        s.close().await;
        r
    }
}

/// Get Chassis Status: bit 0 of the current power state byte.
pub async fn power_status(s: &mut Session) -> Result<Power, BmcError> {
    let d = s.command(0x00, 0x01, &[]).await?;
    let b = d
        .first()
        .ok_or_else(|| BmcError::Protocol("Get Chassis Status: no data".into()))?;
    Ok(if b & 0x01 != 0 { Power::On } else { Power::Off })
}

/// Chassis Control.
pub async fn chassis_control(s: &mut Session, action: PowerAction) -> Result<(), BmcError> {
    let code = match action {
        PowerAction::Off => 0x00,
        PowerAction::On => 0x01,
        PowerAction::Cycle => 0x02,
        PowerAction::Reset => 0x03,
        PowerAction::Soft => 0x05,
    };
    s.command(0x00, 0x02, &[code]).await.map(|_| ())
}

/// Set System Boot Options, parameter 5 (boot flags): valid, once or persistent, BIOS or
/// EFI, device.
pub async fn set_boot(
    s: &mut Session,
    target: BootTarget,
    once: bool,
    efi: bool,
) -> Result<(), BmcError> {
    let mut flags = 0x80u8;
    if !once {
        flags |= 0x40;
    }
    if efi {
        flags |= 0x20;
    }
    let device = match target {
        BootTarget::Pxe => 0x04,
        BootTarget::Disk => 0x08,
        BootTarget::Cdrom => 0x14,
        BootTarget::BiosSetup => 0x18,
    };
    s.command(0x00, 0x08, &[0x05, flags, device, 0, 0, 0])
        .await
        .map(|_| ())
}

/// Get Device ID.
pub async fn device_id(s: &mut Session) -> Result<BmcInfo, BmcError> {
    let d = s.command(0x06, 0x01, &[]).await?;
    if d.len() < 11 {
        return Err(BmcError::Protocol("Get Device ID: short answer".into()));
    }
    Ok(BmcInfo {
        protocol: "ipmi".into(),
        firmware: format!("{}.{:02x}", d[2] & 0x7f, d[3]),
        ipmi_version: Some(format!("{}.{}", d[4] & 0x0f, d[4] >> 4)),
        manufacturer: Some(format!(
            "IANA {}",
            u32::from_le_bytes([d[6], d[7], d[8], 0])
        )),
        model: Some(format!(
            "product {:#06x}",
            u16::from_le_bytes([d[9], d[10]])
        )),
        serial: None,
        uuid: None,
    })
}

/// Reads FRU device 0 (the board and product areas).
pub async fn read_fru(s: &mut Session) -> Result<wire::Fru, BmcError> {
    let info = s.command(0x0a, 0x10, &[0]).await?;
    if info.len() < 3 {
        return Err(BmcError::Protocol(
            "Get FRU Inventory Area Info: short answer".into(),
        ));
    }
    let size = (u16::from_le_bytes([info[0], info[1]]) as usize).min(4096);
    let words = info[2] & 0x01 != 0;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        let want = (size - data.len()).min(24);
        let off = if words { data.len() / 2 } else { data.len() } as u16;
        let count = if words { want.div_ceil(2) } else { want } as u8;
        let r = s
            .command(0x0a, 0x11, &[0, off as u8, (off >> 8) as u8, count])
            .await?;
        let got = *r.first().unwrap_or(&0) as usize;
        let got = if words { got * 2 } else { got };
        if got == 0 || r.len() < 1 + got {
            break;
        }
        data.extend_from_slice(&r[1..1 + got]);
    }
    wire::parse_fru(&data).map_err(|e| BmcError::Protocol(format!("FRU: {e}")))
}

/// Reads up to `max` System Event Log records, oldest first.
pub async fn read_sel(s: &mut Session, max: usize) -> Result<Vec<wire::SelEntry>, BmcError> {
    let info = s.command(0x0a, 0x40, &[]).await?;
    let entries = if info.len() >= 3 {
        u16::from_le_bytes([info[1], info[2]])
    } else {
        0
    };
    let mut out = Vec::new();
    let mut id: u16 = 0x0000;
    while entries > 0 && out.len() < max {
        // Reservation 0 is allowed when reading whole records.
        let d = s
            .command(0x0a, 0x43, &[0, 0, id as u8, (id >> 8) as u8, 0, 0xff])
            .await?;
        let (next, e) =
            wire::parse_sel_entry(&d).map_err(|e| BmcError::Protocol(format!("SEL: {e}")))?;
        out.push(e);
        if next == 0xffff || next == id {
            break;
        }
        id = next;
    }
    Ok(out)
}

impl Bmc for IpmiBmc {
    fn power_status(&self) -> BoxFuture<'_, Result<Power, BmcError>> {
        Box::pin(self.with_session(async |s| power_status(s).await))
    }
    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(self.with_session(async move |s| chassis_control(s, action).await))
    }
    fn set_boot(
        &self,
        target: BootTarget,
        once: bool,
        efi: bool,
    ) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(self.with_session(async move |s| set_boot(s, target, once, efi).await))
    }
    fn info(&self) -> BoxFuture<'_, Result<BmcInfo, BmcError>> {
        Box::pin(self.with_session(async |s| device_id(s).await))
    }
    fn inventory(&self) -> BoxFuture<'_, Result<BmcInventory, BmcError>> {
        Box::pin(self.with_session(async |s| {
            let f = read_fru(s).await?;
            Ok(BmcInventory {
                manufacturer: f.product_manufacturer.or(f.board_manufacturer),
                model: f.product_name.or(f.board_product),
                serial: f.product_serial.or(f.board_serial),
                ..Default::default()
            })
        }))
    }
}
