//! Decodes arbitrary bytes (zero-padded to 491) as a relay message area. A decoded
//! message must re-encode to an area that decodes to the same message; the DATA fast
//! path and the context restrictions must agree with the full decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onionvpn_proto::consts::RELAY_PAYLOAD_LEN;
use onionvpn_proto::relaymsg::{decode_data, ClientBound, RelayBound, RelayMsg};

fuzz_target!(|data: &[u8]| {
    let mut area = [0u8; RELAY_PAYLOAD_LEN];
    let n = data.len().min(RELAY_PAYLOAD_LEN);
    area[..n].copy_from_slice(&data[..n]);

    let decoded = RelayMsg::decode(&area);
    match (&decoded, decode_data(&area)) {
        (Ok(RelayMsg::Data(s, d)), Ok(Some((fs, fd)))) => assert_eq!((*s, *d), (fs, fd)),
        (Ok(RelayMsg::Data(..)), other) => panic!("fast path disagrees: {other:?}"),
        (_, Ok(Some(_))) => panic!("fast path found DATA the decoder did not"),
        _ => {}
    }
    if let Ok(msg) = decoded {
        let mut again = [0xa5u8; RELAY_PAYLOAD_LEN];
        msg.encode_into(&mut again).expect("a decoded message re-encodes");
        assert_eq!(RelayMsg::decode(&again).as_ref(), Ok(&msg));
        if let Ok(c) = ClientBound::try_from(msg.clone()) {
            assert_eq!(RelayMsg::from(c), msg);
        }
        if let Ok(r) = RelayBound::try_from(msg.clone()) {
            assert_eq!(RelayMsg::from(r), msg);
        }
    }
});
