//! Parses arbitrary bytes as a cell (short inputs are zero-padded to 512 bytes) and
//! every typed body view of it. A parsed cell must give back exactly its input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_proto::cell::Cell;
use onionvpn_proto::consts::CELL_LEN;

fuzz_target!(|data: &[u8]| {
    let mut raw = [0u8; CELL_LEN];
    let n = data.len().min(CELL_LEN);
    raw[..n].copy_from_slice(&data[..n]);
    if let Ok(cell) = Cell::parse(&raw) {
        assert_eq!(cell.as_bytes(), &raw);
        assert_eq!(cell.circ_id().is_none(), !cell.cmd().is_circuit_level());
        let _ = cell.as_create();
        let _ = cell.as_created();
        let _ = cell.as_destroy();
    }
});
