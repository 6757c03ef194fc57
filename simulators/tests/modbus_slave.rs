//! The simulated XY-MD02 bus (`sensor-sim serial --device xy-md02`) over a real pseudo-terminal:
//! the same seed and requests give byte-identical answers, and each fault mode produces what it
//! claims when a real Modbus master — `tokio-modbus`'s RTU client on a `tokio-serial` port, as in
//! the gateway — polls it.

use std::sync::mpsc;
use std::time::Duration;

use ioc_frames::modbus::{crc16, with_crc};
use sensor_sim::modbus_slave::{
    parse_slaves, serve_pty, Exchange, ModbusBus, ServeLimits, ILLEGAL_DATA_ADDRESS,
};
use sensor_sim::serial::open_pty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::Reader;
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

/// Opens the pty's terminal side as the gateway opens a serial port: 9600 8N1, raw, no flow
/// control.
fn open_port(path: &std::path::Path) -> tokio_serial::SerialStream {
    use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, StopBits};
    tokio_serial::new(path.to_string_lossy(), 9600)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
        .unwrap()
}

/// Starts the bus on a new pty in a thread; returns the pty path and the exchanges it makes.
fn start_bus(
    seed: u64,
    slaves: &str,
    faults: &str,
    requests: u64,
) -> (
    std::path::PathBuf,
    mpsc::Receiver<Exchange>,
    std::thread::JoinHandle<()>,
) {
    let pty = open_pty().unwrap();
    let path = pty.path.clone();
    let mut bus = ModbusBus::new(
        seed,
        &parse_slaves(slaves).unwrap(),
        faults.parse().unwrap(),
        1_795_480_200_000,
        5_000,
        600,
    );
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        serve_pty(
            &pty,
            &mut bus,
            ServeLimits {
                requests: Some(requests),
                duration: Some(Duration::from_secs(30)),
                turnaround: Duration::from_millis(2),
            },
            |ex, _, _| {
                let _ = tx.send(ex.clone());
            },
        )
        .unwrap();
        // keep the line up a little, so the master's last read is not a vanished port
        std::thread::sleep(Duration::from_millis(300));
    });
    (path, rx, handle)
}

fn words_of(ex: &Exchange) -> Vec<u16> {
    let t = (ex.values["temperature"] * 10.0).round() as i16 as u16;
    let h = (ex.values["humidity"] * 10.0).round() as u16;
    vec![t, h]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_mode_does_what_it_claims_to_a_real_master() {
    let (path, exchanges, bus) =
        start_bus(3, "1,2:dead,3:bad_crc,4:exception,5:noise,6:slow", "", 7);
    let port = open_port(&path);
    let mut ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(1));
    let timeout = Duration::from_millis(300);
    let next = || exchanges.recv_timeout(Duration::from_secs(5)).unwrap();

    // 1: a correct answer with the values the bus says it served
    ctx.set_slave(Slave(1));
    let words = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2))
        .await
        .expect("slave 1 answers")
        .unwrap()
        .unwrap();
    let ex = next();
    assert!(ex.clean_answer());
    assert_eq!(words, words_of(&ex));
    let (t, h) = (ex.values["temperature"], ex.values["humidity"]);
    assert!(
        (20.0..40.0).contains(&t) && (30.0..=99.5).contains(&h),
        "{t} {h}"
    );
    println!("slave 1: {t} °C, {h} % ({words:?})");

    // 2: dead — nothing comes back
    ctx.set_slave(Slave(2));
    let r = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2)).await;
    assert!(r.is_err(), "dead slave answered: {r:?}");
    assert!(next().answer.is_empty());

    // 3: bad CRC — bytes come back but the master never accepts them
    ctx.set_slave(Slave(3));
    let r = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2)).await;
    assert!(r.is_err(), "bad-CRC answer accepted: {r:?}");
    let ex = next();
    let a = &ex.answer;
    assert_eq!((a.len(), &a[..3]), (9, &[3u8, 4, 4][..]));
    assert_ne!(crc16(&a[..7]).to_le_bytes(), [a[7], a[8]]);

    // 4: exception 02
    ctx.set_slave(Slave(4));
    let r = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2))
        .await
        .expect("exception slave answers")
        .unwrap();
    assert_eq!(r, Err(ExceptionCode::IllegalDataAddress));
    assert_eq!(next().exception, Some(ILLEGAL_DATA_ADDRESS));

    // 5: noise before an intact answer — the master skips it and gets the values
    ctx.set_slave(Slave(5));
    let words = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2))
        .await
        .expect("noisy slave answers")
        .unwrap()
        .unwrap();
    let ex = next();
    assert!(ex.answer.len() > 9);
    assert_eq!(words, words_of(&ex));

    // an address not on the bus: ignored
    ctx.set_slave(Slave(9));
    let r = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2)).await;
    assert!(r.is_err(), "slave 9 answered: {r:?}");
    assert!(exchanges.try_recv().is_err(), "slave 9 made an exchange");

    // 1 again: the transmitter moves on to its next sample
    ctx.set_slave(Slave(1));
    tokio::time::timeout(timeout, ctx.read_input_registers(1, 2))
        .await
        .expect("slave 1 answers")
        .unwrap()
        .unwrap();
    assert!(next().clean_answer());

    // 6: slow — the answer comes after 600 ms, past the master's 300 ms
    ctx.set_slave(Slave(6));
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(timeout, ctx.read_input_registers(1, 2)).await;
    assert!(r.is_err(), "slow answer was in time: {r:?}");
    let ex = next();
    assert_eq!(ex.delay_ms, 600);
    assert!(started.elapsed() >= Duration::from_millis(600));
    tokio::task::spawn_blocking(move || bus.join().unwrap())
        .await
        .unwrap();
}

/// Sends `requests` one by one on a raw port and returns everything on the wire: each request
/// followed by whatever came back within 80 ms.
async fn transcript(seed: u64, requests: &[Vec<u8>]) -> Vec<u8> {
    let (path, _exchanges, bus) = start_bus(
        seed,
        "1,2,3:noise",
        "bad_crc=0.2,exception=0.2,timeout=0.1,noise=0.2",
        requests.len() as u64,
    );
    let mut port = open_port(&path);
    let mut wire = Vec::new();
    for req in requests {
        port.write_all(req).await.unwrap();
        wire.extend_from_slice(req);
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(80);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
            wire.extend_from_slice(&buf[..n]);
        }
    }
    tokio::task::spawn_blocking(move || bus.join().unwrap())
        .await
        .unwrap();
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_byte_identical_answers_over_the_pty() {
    let requests: Vec<Vec<u8>> = (0..24u16)
        .map(|i| {
            let slave = [1u8, 2, 3][usize::from(i % 3)];
            let (function, address, count) = match i % 4 {
                0 | 1 => (4, 1, 2),
                2 => (3, 1, 1),
                _ => (4, 7, 1), // illegal address
            };
            let mut b = vec![slave, function];
            b.extend(u16::to_be_bytes(address));
            b.extend(u16::to_be_bytes(count));
            with_crc(b)
        })
        .collect();
    let a = transcript(21, &requests).await;
    let b = transcript(21, &requests).await;
    let c = transcript(22, &requests).await;
    let digest = |w: &[u8]| {
        w.iter()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
    };
    println!(
        "seed 21: {} bytes on the wire (digest {:016x}), seed 22: {} bytes",
        a.len(),
        digest(&a),
        c.len()
    );
    assert_eq!(
        a, b,
        "same seed, same requests: the wire must be byte-identical"
    );
    assert_ne!(a, c, "another seed gives other values");

    // The pure bus gives exactly what came over the pty.
    let mut bus = ModbusBus::new(
        21,
        &parse_slaves("1,2,3:noise").unwrap(),
        "bad_crc=0.2,exception=0.2,timeout=0.1,noise=0.2"
            .parse()
            .unwrap(),
        1_795_480_200_000,
        5_000,
        600,
    );
    let mut pure = Vec::new();
    for req in &requests {
        pure.extend_from_slice(req);
        pure.extend(bus.handle(req).answer);
    }
    assert_eq!(a, pure);
}
