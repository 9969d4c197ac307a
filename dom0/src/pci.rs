//! PCI configuration access for dom0 through configuration mechanism #1 (ports 0xcf8 /
//! 0xcfc), which the hypervisor passes through to the privileged domain only (each
//! `in`/`out` traps and is emulated against the real port; see `hv-core/src/hv/emul.rs`).
//!
//! The port operations are a trait ([`PortIo`]) so the address encoding and the bus scan
//! are host-tested against a simulated configuration space; dom0's real implementation
//! executes `in`/`out` (`crate::virtio`). Enumeration itself is `virtio-drivers`'
//! [`PciRoot`].

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::virtio_device_type;
use virtio_drivers::transport::DeviceType;

/// CONFIG_ADDRESS.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA.
pub const CONFIG_DATA: u16 = 0xcfc;

/// 32-bit port I/O (dom0: trapped and emulated by the hypervisor).
pub trait PortIo {
    /// `in eax, dx`.
    fn inl(&self, port: u16) -> u32;
    /// `out dx, eax`.
    fn outl(&self, port: u16, value: u32);
}

/// The CONFIG_ADDRESS value selecting dword `register & !3` of `df`.
pub fn config_address(df: DeviceFunction, register: u8) -> u32 {
    0x8000_0000
        | (u32::from(df.bus) << 16)
        | (u32::from(df.device & 0x1f) << 11)
        | (u32::from(df.function & 7) << 8)
        | u32::from(register & 0xfc)
}

/// Configuration mechanism #1 over [`PortIo`].
pub struct PortCam<P: PortIo + Clone>(pub P);

impl<P: PortIo + Clone> ConfigurationAccess for PortCam<P> {
    fn read_word(&self, df: DeviceFunction, register: u8) -> u32 {
        self.0.outl(CONFIG_ADDRESS, config_address(df, register));
        self.0.inl(CONFIG_DATA)
    }

    fn write_word(&mut self, df: DeviceFunction, register: u8, data: u32) {
        self.0.outl(CONFIG_ADDRESS, config_address(df, register));
        self.0.outl(CONFIG_DATA, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam(self.0.clone())
    }
}

/// The first virtio block device on bus 0 (virtio-blk-pci: vendor 0x1af4, device
/// 0x1001 transitional or 0x1042 modern).
pub fn find_virtio_blk<C: ConfigurationAccess>(root: &PciRoot<C>) -> Option<DeviceFunction> {
    root.enumerate_bus(0)
        .find_map(|(df, info)| (virtio_device_type(&info) == Some(DeviceType::Block)).then_some(df))
}

/// The legacy interrupt line the firmware routed `df`'s INTx pin to (config 0x3c; 0xff
/// or 0 = none).
pub fn interrupt_line(cam: &impl ConfigurationAccess, df: DeviceFunction) -> u8 {
    cam.read_word(df, 0x3c) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A simulated bus 0: a host bridge at 00:00.0, a NIC at 00:03.0 and a virtio block
    /// device at 00:04.0 (interrupt line 11). Tracks CONFIG_ADDRESS like the chipset.
    /// CONFIG_ADDRESS and every (address, value) written to CONFIG_DATA.
    type State = (u32, Vec<(u32, u32)>);

    #[derive(Clone, Default)]
    struct Bus(Rc<RefCell<State>>);

    impl Bus {
        fn space(addr: u32) -> u32 {
            let (dev, reg) = ((addr >> 11) & 0x1f, addr & 0xfc);
            let (bus, func) = ((addr >> 16) & 0xff, (addr >> 8) & 7);
            if bus != 0 || func != 0 {
                return u32::MAX;
            }
            match (dev, reg) {
                (0, 0) => 0x1237_8086,
                (3, 0) => 0x100e_8086,
                (4, 0) => 0x1001_1af4,
                (4, 8) => 0x0100_0000, // class: mass storage
                (4, 0x2c) => 0x0002_1af4,
                (4, 0x3c) => 0x0000_010b,
                (0 | 3 | 4, 0xc) => 0,
                (_, 0) => u32::MAX,
                _ => 0,
            }
        }
    }

    impl PortIo for Bus {
        fn inl(&self, port: u16) -> u32 {
            assert_eq!(port, CONFIG_DATA);
            let s = self.0.borrow();
            s.1.iter()
                .rev()
                .find(|w| w.0 == s.0)
                .map_or_else(|| Bus::space(s.0), |w| w.1)
        }
        fn outl(&self, port: u16, value: u32) {
            let mut s = self.0.borrow_mut();
            match port {
                CONFIG_ADDRESS => s.0 = value,
                CONFIG_DATA => {
                    let a = s.0;
                    s.1.push((a, value));
                }
                _ => panic!("port {port:#x}"),
            }
        }
    }

    #[test]
    fn address_encoding() {
        let df = DeviceFunction {
            bus: 1,
            device: 4,
            function: 2,
        };
        assert_eq!(config_address(df, 0x3e), 0x8001_223c);
        assert_eq!(
            config_address(
                DeviceFunction {
                    bus: 0,
                    device: 31,
                    function: 7
                },
                0
            ),
            0x8000_ff00
        );
    }

    #[test]
    fn finds_the_block_device_and_its_line() {
        let bus = Bus::default();
        let root = PciRoot::new(PortCam(bus.clone()));
        let df = find_virtio_blk(&root).expect("found");
        let mut cam = PortCam(bus);
        let line = interrupt_line(&cam, df);
        assert_eq!((df.bus, df.device, df.function, line), (0, 4, 0, 11));
        cam.write_word(df, 4, 0x6);
        assert_eq!(cam.read_word(df, 4), 0x6);
    }

    #[test]
    fn no_device_no_result() {
        #[derive(Clone)]
        struct Empty;
        impl PortIo for Empty {
            fn inl(&self, _: u16) -> u32 {
                u32::MAX
            }
            fn outl(&self, _: u16, _: u32) {}
        }
        assert!(find_virtio_blk(&PciRoot::new(PortCam(Empty))).is_none());
    }
}
