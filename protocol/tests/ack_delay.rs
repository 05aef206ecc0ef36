//! Delayed acknowledgements (`TransportConfig::ack_delay`) in virtual time: a reply carries
//! the ACK of its request, so an exchange costs two datagrams instead of four; the peer's
//! retransmission timeout allows for the delay, so no ACK held back looks like a loss; and
//! under random loss the latency tail is that of immediate ACKs, give or take the delay itself.

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::ConnectionStats;
use ferry_protocol::fec::FecMode;
use ferry_protocol::sim::exchange::{quantile, request_response, Exchanges};
use ferry_protocol::sim::{LinkConfig, Pair};

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);

/// Exchanges over a 40 ms round trip with `loss` each way; the latencies (sorted) and both
/// ends' counters.
fn run(
    config: TransportConfig,
    loss: f64,
    seed: u64,
    shape: Exchanges,
) -> (Vec<Duration>, ConnectionStats, ConnectionStats) {
    let link = LinkConfig::default().with_delay(20 * MS).with_loss(loss);
    let mut pair = Pair::symmetric(seed, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).expect("handshake");
    // Let the handshake's last packets settle before counting.
    let settle = pair.now + 200 * MS;
    pair.run_until(200 * MS, |p| p.now >= settle);
    let mut latencies = request_response(&mut pair, ch, sh, shape).expect("every exchange ends");
    latencies.sort();
    let client = pair.client.connection_ref(ch).unwrap().stats();
    let server = pair.server.connection_ref(sh).unwrap().stats();
    (latencies, client, server)
}

#[test]
fn back_to_back_exchanges_cost_two_datagrams_when_replies_carry_the_acks() {
    let shape = Exchanges {
        count: 200,
        size: 1024,
        pause: Duration::ZERO,
        think: 200 * US,
    };
    let per_exchange = |ack_delay| {
        // Tail duplication would send every lone request and response twice: this test
        // counts what the acknowledgements cost.
        let config = TransportConfig::default()
            .ack_delay(ack_delay)
            .tail_duplication(false);
        let (_, c0, s0) = run(config.clone(), 0.0, 1, Exchanges { count: 0, ..shape });
        let (_, c, s) = run(config, 0.0, 1, shape);
        let sent = c.packets_sent + s.packets_sent - c0.packets_sent - s0.packets_sent;
        sent as f64 / shape.count as f64
    };
    let delayed = per_exchange(TransportConfig::default().ack_delay);
    let immediate = per_exchange(Duration::ZERO);
    eprintln!("datagrams per exchange: immediate ACKs {immediate:.2}, delayed {delayed:.2}");
    assert!(delayed <= 2.1, "{delayed:.2} datagrams per exchange");
    assert!(immediate >= 2.9, "{immediate:.2} datagrams per exchange");
}

#[test]
fn an_ack_held_back_for_its_delay_is_never_taken_for_a_loss() {
    // Each exchange ends with the client's lone ACK of the response, held for the whole delay
    // (nothing comes to carry it): the server must wait for it, not retransmit.
    let shape = Exchanges {
        count: 100,
        size: 1024,
        pause: 100 * MS,
        think: Duration::ZERO,
    };
    for ack_delay in [MS, 5 * MS, 25 * MS] {
        let config = TransportConfig::default().ack_delay(ack_delay);
        let (_, client, server) = run(config, 0.0, 3, shape);
        assert_eq!(
            (client.packets_lost, server.packets_lost),
            (0, 0),
            "ack delay {ack_delay:?}: packets taken for lost on a loss-free link"
        );
        assert_eq!(
            (client.rto_expiries, server.rto_expiries),
            (0, 0),
            "ack delay {ack_delay:?}: retransmission timeouts on a loss-free link"
        );
    }
}

#[test]
fn under_random_loss_the_tail_is_that_of_immediate_acks() {
    let shape = Exchanges {
        count: 400,
        size: 1024,
        pause: 50 * MS,
        think: 200 * US,
    };
    let ack_delay = TransportConfig::default().ack_delay;
    for loss in [0.05, 0.10] {
        let (mut delayed, mut immediate) = (Vec::new(), Vec::new());
        for seed in 1..=3 {
            // Without forward error correction: tail duplication is the repair whose timing
            // the ACK delay could disturb (with FEC, each run's tail is the group hold's).
            let config = TransportConfig::default().fec(FecMode::Off);
            delayed.extend(run(config.clone(), loss, seed, shape).0);
            immediate.extend(run(config.ack_delay(Duration::ZERO), loss, seed, shape).0);
        }
        delayed.sort();
        immediate.sort();
        for q in [0.5, 0.9, 0.99] {
            let (d, i) = (quantile(&delayed, q), quantile(&immediate, q));
            eprintln!("loss {loss}: q{q}: delayed {d:?}, immediate {i:?}");
            // A request lost with its tail duplicate waits for a timeout that now includes the
            // peer's ACK delay: at most that much later, never more.
            assert!(
                d <= i + ack_delay + MS / 2,
                "loss {loss}, quantile {q}: {d:?} with delayed ACKs, {i:?} without"
            );
        }
    }
}
