//! Fuzz harnesses of the node's decoders (cargo-fuzz targets in `fuzz/`,
//! docs/security.md). Each takes any bytes and must return without a panic;
//! kept in the crate so the regression cases run as unit tests.

use std::sync::Arc;

use roomkeeper_order_state::{Command, ShardState};

use crate::auth::{Principal, Scope, TokenTable};
use crate::transport::{authorize_forwarded, Envelope, ForwardBatch, RpcRequest, RpcResponse};

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> =
        tokio::runtime::Builder::new_current_thread().build().ok();
}

/// The Raft frame reader and decoder: `data` is what a peer sends (length
/// prefix included). A decoded forward is also authorized, as the leader
/// would, and its batch rebuilt.
pub fn raft_frame(data: &[u8]) {
    RUNTIME.with(|rt| {
        let Some(rt) = rt else { return };
        rt.block_on(async {
            let mut scratch = Vec::new();
            let mut r = data;
            // Every frame of the stream, until the end or the first error.
            while let Ok(Some(env)) =
                crate::wire::read_frame::<_, Envelope<RpcRequest>>(&mut r, &mut scratch).await
            {
                if let RpcRequest::Forward(batch) = &env.body {
                    forwarded(batch);
                }
            }
            let mut r = data;
            let _ = crate::wire::read_frame::<_, Envelope<RpcResponse>>(&mut r, &mut scratch).await;
        });
    });
    if let Ok(env) = postcard::from_bytes::<Envelope<RpcRequest>>(data) {
        if let RpcRequest::Forward(batch) = &env.body {
            forwarded(batch);
        }
    }
}

fn forwarded(batch: &ForwardBatch) {
    let table = TokenTable::open();
    let state = ShardState::new();
    for (i, cmd) in &batch.commands {
        let _ = authorize_forwarded(&table, &state, batch, *i, cmd);
        let _ = cmd.validate();
    }
    let principals: Vec<Arc<Principal>> = batch
        .commands
        .iter()
        .map(|(i, _)| {
            Arc::new(
                batch
                    .principals
                    .get(*i as usize)
                    .cloned()
                    .unwrap_or(Principal {
                        name: String::new(),
                        scope: Scope::all(),
                    }),
            )
        })
        .collect();
    let commands: Vec<Command> = batch.commands.iter().map(|(_, c)| c.clone()).collect();
    let again = ForwardBatch::new(commands, &principals);
    assert_eq!(again.commands.len(), batch.commands.len());
}

/// The client API's decoders: the first byte picks one, the rest is its
/// input — a JSON body (then validated as the command it becomes), an order
/// id from a path, a query string's JSON form, a token file, a scope.
/// The framed protocol's reader (framed_api.rs): `data` is what a client
/// sends on a connection. Every whole frame is taken as the node takes it,
/// until the first one it would refuse; an order's body is read and
/// validated as the node would. Each payload is also read as an answer, as a
/// client reads the node's.
pub fn framed_stream(data: &[u8]) {
    use roomkeeper_api::client::PlaceOrder;
    use roomkeeper_api::framed::{decode_request, decode_response, next_frame, Request};
    let mut rest = data;
    while let Ok(Some((payload, used))) = next_frame(rest) {
        let _ = decode_response(payload);
        match decode_request(payload) {
            Ok(Request::PlaceOrder { room, body, .. }) => {
                if let Ok(b) = serde_json::from_slice::<PlaceOrder>(body) {
                    let _ = order_command(room, b).validate();
                }
            }
            Ok(Request::Hello { token, .. }) => {
                let _ = TokenTable::open().authenticate_secret(Some(token.as_bytes()));
            }
            Err(_) => return,
        }
        rest = &rest[used..];
    }
}

/// The command a place-order body becomes (its contact unsealed).
fn order_command(room: &str, b: roomkeeper_api::client::PlaceOrder) -> Command {
    Command::PlaceOrder {
        room: room.to_string(),
        sku: b.sku,
        buyer: b.buyer,
        qty: b.qty,
        idempotency_key: b.idempotency_key,
        contact: b.contact.into_bytes(),
    }
}

pub fn client_request(data: &[u8]) {
    use roomkeeper_api::client::{PlaceOrder, PutListing, PutRoom, ReadParams};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 6 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<PlaceOrder>(rest) {
                let _ = order_command("r", b).validate();
            }
        }
        1 => {
            if let Ok(b) = serde_json::from_slice::<PutListing>(rest) {
                let cmd = Command::UpsertListing {
                    room: "r".into(),
                    sku: "s".into(),
                    price_cents: b.price_cents,
                    stock_total: b.stock,
                    per_buyer_limit: b.per_buyer_limit,
                    state: b.state,
                };
                let _ = cmd.validate();
            }
        }
        2 => {
            if let Ok(b) = serde_json::from_slice::<PutRoom>(rest) {
                let cmd = Command::UpsertRoom {
                    room: text.to_string(),
                    title: b.title,
                    home_region: b.home_region,
                    state: b.state,
                };
                let _ = cmd.validate();
            }
        }
        3 => {
            let _ = serde_json::from_slice::<ReadParams>(rest);
            let _ = crate::api::parse_order_id(&text);
        }
        4 => {
            if let Ok(t) = TokenTable::parse(&text) {
                let _ = t.authenticate(Some(rest));
            }
        }
        _ => {
            let (rooms, verbs) = text.split_once(' ').unwrap_or((&text, "*"));
            if let Ok(s) = Scope::parse(rooms, verbs) {
                let _ = s.allows(crate::auth::Verb::Order, &text);
                let _ = s.covers_room(rooms);
            }
        }
    }
}

/// The admin API's JSON bodies, every kind.
pub fn admin_request(data: &[u8]) {
    crate::admin::decode_every_body(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harnesses_take_their_seeds_and_garbage() {
        let order = br#"{"sku":"s","buyer":"b","qty":1,"idempotency_key":"k","contact":"c"}"#;
        for which in 0..6u8 {
            let mut d = vec![which];
            d.extend_from_slice(order);
            client_request(&d);
            client_request(&[which, 0xff, 0xfe]);
        }
        let env = Envelope {
            id: 1,
            cluster: "c".into(),
            shard: crate::transport::HOSTED_SHARD,
            from: 1,
            to: 2,
            body: RpcRequest::Forward(ForwardBatch {
                principals: vec![],
                commands: vec![(3, Command::CancelOrder { order_id: 1 })],
            }),
        };
        let frame = crate::wire::encode_frame(&env).expect("encode");
        raft_frame(&frame);
        raft_frame(&frame[4..]);
        raft_frame(&[0, 0, 0, 2, 9]);
        admin_request(br#"{"members":{"1":{"raft_addr":"a","api_addr":"b","admin_addr":"c","region":"r","zone":"z"}}}"#);
        admin_request(b"\x00");
        for seed in std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/seeds/framed_stream"
        ))
        .expect("framed_stream seeds")
        {
            let bytes = std::fs::read(seed.expect("seed").path()).expect("read seed");
            framed_stream(&bytes);
            framed_stream(&bytes[..bytes.len() / 2]);
        }
        framed_stream(&[0, 0, 0, 0]);
        framed_stream(&[0xff; 9]);
    }
}
