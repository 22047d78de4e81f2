//! The link's receive path on arbitrary bytes: the frame decoder (any chunking), the
//! responder's handshake, and transport decryption of genuine frames with fuzzer-chosen
//! corruption. Nothing may panic; corrupted frames must be refused, intact ones delivered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use onionvpn_proto::consts::CELL_LEN;
use onionvpn_proto::link::{FrameDecoder, LinkInitiator, LinkResponder, LinkSecretKey, MAX_FRAME_LEN};


/// Feeds `wire` in chunks whose sizes come from `sizes`, calling `f` on every frame.
fn decode(wire: &[u8], sizes: &[u8], mut f: impl FnMut(&[u8]) -> bool) {
    let mut dec = FrameDecoder::new();
    let (mut pos, mut i) = (0, 0);
    while pos < wire.len() {
        let want = 1 + usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(255)) * 64;
        i += 1;
        let buf = dec.read_buf();
        let n = want.min(buf.len()).min(wire.len() - pos);
        buf[..n].copy_from_slice(&wire[pos..pos + n]);
        dec.commit(n).unwrap();
        pos += n;
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= MAX_FRAME_LEN);
                    if !f(frame) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    let secret = LinkSecretKey::generate(&mut rng);
    let id = [7u8; 32];
    if mode & 1 == 0 {
        // Raw bytes from an unknown initiator: message 1, then transport frames.
        let (sizes, wire) = rest.split_at(rest.len().min(8));
        let mut responder = Some(LinkResponder::new(&mut rng, id, &secret).unwrap());
        let mut link = None;
        let mut cells = Vec::new();
        decode(wire, sizes, |frame| {
            if let Some(r) = responder.take() {
                match r.read_frame(frame) {
                    Ok((l, _reply)) => link = Some(l),
                    Err(_) => return false,
                }
                true
            } else if let Some(l) = link.as_mut() {
                cells.clear();
                l.decrypt_frame(frame, &mut cells).is_ok()
            } else {
                false
            }
        });
    } else {
        // Genuine frames from an established link, corrupted by XOR with the input.
        let Some((&count, rest)) = rest.split_first() else { return };
        let (sizes, flips) = rest.split_at(rest.len().min(8));
        let (init, f1) = LinkInitiator::new(&mut rng, id, secret.public()).unwrap();
        let resp = LinkResponder::new(&mut rng, id, &secret).unwrap();
        let (mut r, f2) = resp.read_frame(&f1[2..]).unwrap();
        let mut i = init.read_frame(&f2[2..]).unwrap();
        let sent: Vec<[u8; CELL_LEN]> =
            (0..usize::from(count) + 1).map(|n| [n as u8; CELL_LEN]).collect();
        let mut wire = Vec::new();
        i.encrypt_cells(&sent, &mut wire).unwrap();
        let mut corrupted = false;
        for (w, x) in wire.iter_mut().zip(flips) {
            corrupted |= *x != 0;
            *w ^= x;
        }
        let mut got = Vec::new();
        let mut failed = false;
        decode(&wire, sizes, |frame| match r.decrypt_frame(frame, &mut got) {
            Ok(_) => true,
            Err(_) => {
                failed = true;
                false
            }
        });
        // Whatever was delivered is a prefix of what was sent, byte for byte.
        assert!(got.len() <= sent.len());
        assert!(got[..] == sent[..got.len()]);
        if !corrupted {
            assert!(!failed && got.len() == sent.len());
        }
    }
});
