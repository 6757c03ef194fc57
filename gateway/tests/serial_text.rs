//! The text protocols (`nmea0183`, `vaisala`) through real `tokio-serial` ports on
//! pseudo-terminal pairs: sentences and messages from the protocols' public documentation and
//! public projects' test data, with bad checksums, torn lines, CR/LF/CRLF mixes, garbage, a 1 MiB
//! line without a line end, a GNSS receiver without a fix, and a weather station in polled mode.
//! Every test reads the exact line protocol, with its timestamps, back from a real disk buffer.

mod pty_common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ioc_gateway::buffer::{self, BufferConfig, BufferReader};
use ioc_gateway::config::{SerialInputConfig, SerialProtocol};
use ioc_gateway::input::serial::{run_serial_input, SerialPortStatus};
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use ioc_gateway::shutdown::Shutdown;
use pty_common::pty;

struct Harness {
    reader: BufferReader,
    ingest: Ingest,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _) = buffer::open(BufferConfig::new(dir.path(), 64 << 20)).unwrap();
    Harness {
        reader,
        ingest: Ingest::new(writer, "gw-test", Flavor::V2),
        shutdown: Shutdown::new(),
        _dir: dir,
    }
}

impl Harness {
    fn status(&self, port: &str) -> Option<SerialPortStatus> {
        self.ingest
            .status()
            .serial_ports()
            .into_iter()
            .find(|s| s.port == port)
    }

    fn start(&self, cfg: SerialInputConfig) -> tokio::task::JoinHandle<()> {
        let ingest = self.ingest.clone();
        let rx = self.shutdown.clone();
        tokio::spawn(async move { run_serial_input(cfg, 0, ingest, rx).await.unwrap() })
    }

    async fn up(&self, port: &str) {
        wait_for("port up", Duration::from_secs(5), || {
            self.status(port).is_some_and(|s| s.up)
        })
        .await;
    }

    /// The next `n` lines from the buffer, each split into body and timestamp.
    async fn lines(&mut self, n: usize, within: Duration) -> Vec<(String, i64)> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = tokio::time::timeout(left, self.reader.next_batch(1000))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} lines: {lines:#?}", lines.len()))
                .unwrap();
            let text = String::from_utf8(batch.line_protocol().unwrap()).unwrap();
            for line in text.lines() {
                let (body, ts) = line.rsplit_once(' ').unwrap();
                lines.push((body.to_owned(), ts.parse().unwrap()));
            }
            self.reader.ack(&batch).await.unwrap();
        }
        lines
    }

    async fn no_more_lines(&mut self, quiet: Duration) {
        if let Ok(batch) = tokio::time::timeout(quiet, self.reader.next_batch(1000)).await {
            let text = String::from_utf8(batch.unwrap().line_protocol().unwrap()).unwrap();
            panic!("unexpected lines: {text}");
        }
    }

    async fn stop(self, task: tokio::task::JoinHandle<()>) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cfg(name: &str, port: &Path, protocol: SerialProtocol) -> SerialInputConfig {
    SerialInputConfig {
        name: Some(name.into()),
        sensor_id: Some(format!("{name}-1")),
        ..SerialInputConfig::new(port, protocol)
    }
}

/// Unix nanoseconds of a UTC date and time.
fn utc_ns(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> i64 {
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), d).unwrap();
    date.with_hms(h, mi, s)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
        * 1_000_000_000
}

/// Writes `bytes` in pieces of `chunk` with short pauses, as a UART delivers them.
async fn write_slowly(master: &mut std::fs::File, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk) {
        master.write_all(piece).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmea_fixes_keep_their_own_time_and_faults_are_counted_by_reason() {
    let mut h = harness();
    let mut p = pty();
    let task = h.start(cfg("gps-bus", &p.path, SerialProtocol::Nmea0183));
    h.up("gps-bus").await;

    // AeroRust/nmea tests/data/nmea1.log, lines 8..11 (one epoch, 2017-03-31 11:01:24 UTC):
    // GSA (skipped), VTG, RMC, GGA. Line ends: CRLF, LF and CR mixed.
    let mut stream = Vec::new();
    stream.extend(b"$GPGSA,A,3,05,07,08,10,15,17,18,19,30,,,,1.2,0.9,0.8*3B\r\n");
    stream.extend(b"$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E\n");
    stream.extend(b"$GPGGA,110124,5505.330990,N,03858.587325,E,2,09,0.9,2177.0,M,14.0,M,,*7D\r");
    // nmea1.log line 20: the next epoch's VTG (no time: takes the last fix's).
    stream.extend(b"$GPVTG,84.6,T,84.6,M,148.8,N,275.6,K,D*25\r\n");
    // The same RMC with one digit changed and the checksum kept: refused.
    stream.extend(b"$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310318,8.9,E,D*2E\r\n");
    // Line noise, then a sentence torn by a receiver reset, then a whole one on the same line.
    stream.extend(b"\x00\xff\x13\r\n$GPGGA,110125,5505.33$GNRMC,001031.00,A,4404.13993,N,12118.86023,W,0.146,,100117,,,A*7B\r\n");
    // A receiver without a fix (AeroRust/nmea rmc.rs, gga.rs, gll.rs test sentences).
    stream.extend(
        b"$GPRMC,,V,,,,,,,,,,N*53\r\n$GPGGA,,,,,,0,,,,,,,,*66\r\n$GNGLL,,,,,181604.00,V,N*5E\r\n",
    );
    write_slowly(&mut p.master, &stream, 9).await;

    let lines = h.lines(4, Duration::from_secs(5)).await;
    let t = utc_ns(2017, 3, 31, 11, 1, 24);
    let lat = 55.0 + 5.330990 / 60.0;
    let lon = 38.0 + 58.587325 / 60.0;
    let tags = "gnss,gateway=gw-test,sensor_id=gps-bus-1";
    assert_eq!(
        lines,
        vec![
            (
                format!(
                    "{tags},talker=GP course_deg=86.2,lat={lat},lon={lon},speed_kmh={}",
                    152.6 * 1.852
                ),
                t
            ),
            (
                format!("{tags},talker=GP alt_m=2177,fix_quality=2i,hdop=0.9,lat={lat},lon={lon},satellites=9i"),
                t
            ),
            (format!("{tags},talker=GP course_deg=84.6,speed_kmh=275.6"), t),
            (
                format!(
                    "{tags},talker=GN lat={},lon={},speed_kmh={}",
                    44.0 + 4.13993 / 60.0,
                    -(121.0 + 18.86023 / 60.0),
                    0.146 * 1.852
                ),
                utc_ns(2017, 1, 10, 0, 10, 31)
            ),
        ]
    );
    wait_for("faults counted", Duration::from_secs(3), || {
        h.status("gps-bus").is_some_and(|s| s.bad_frames == 3)
    })
    .await;
    let s = h.status("gps-bus").unwrap();
    assert_eq!(s.good_frames, 4);
    assert_eq!(
        s.bad_by_reason,
        BTreeMap::from([
            ("checksum".to_string(), 1),
            ("noise".to_string(), 1),
            ("truncated".to_string(), 1),
        ])
    );
    h.no_more_lines(Duration::from_millis(300)).await;
    h.stop(task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_line_without_an_end_is_dropped_and_the_next_sentence_kept() {
    let mut h = harness();
    let p = pty();
    let task = h.start(cfg("gps-long", &p.path, SerialProtocol::Nmea0183));
    h.up("gps-long").await;

    let mut master = p.master.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // 1 MiB of a sentence-looking line that never ends, then a line end and a sentence
        // (AeroRust/nmea tests/data/nmea1.log line 10).
        let mut junk = b"$GPGGA,".to_vec();
        junk.resize(1 << 20, b'7');
        for piece in junk.chunks(4096) {
            master.write_all(piece).unwrap();
        }
        master
            .write_all(b"\r\n$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E\r\n")
            .unwrap();
    });
    let lines = h.lines(1, Duration::from_secs(20)).await;
    writer.join().unwrap();
    let (body, ts) = &lines[0];
    assert_eq!(
        body,
        &format!(
            "gnss,gateway=gw-test,sensor_id=gps-long-1,talker=GP course_deg=86.2,lat={},lon={},speed_kmh={}",
            55.0 + 5.330990 / 60.0,
            38.0 + 58.587325 / 60.0,
            152.6 * 1.852
        )
    );
    assert_eq!(*ts, utc_ns(2017, 3, 31, 11, 1, 24));
    let s = h.status("gps-long").unwrap();
    assert_eq!(
        s.bad_by_reason,
        BTreeMap::from([("too_long".to_string(), 1)])
    );
    h.stop(task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaisala_automatic_messages_wxt_and_wmt700() {
    let mut h = harness();
    let mut p = pty();
    let mut c = cfg("wx-pole", &p.path, SerialProtocol::Vaisala);
    c.tags = BTreeMap::from([("district".into(), "d3".into())]);
    let task = h.start(c);
    h.up("wx-pole").await;

    let mut stream = Vec::new();
    // WXT530 Series User Guide M211840EN-D §7.2.4 and §7.2.5 (CR LF as the station sends).
    stream.extend(b"0R1,Dn=236D,Dm=283D,Dx=031D,Sn=0.0M,Sm=1.0M,Sx=2.2M\r\n");
    stream.extend(b"0R2,Ta=23.6C,Ua=14.2P,Pa=1026.6H\r\n");
    // Wind invalid ('#'), as logged in marcov/weewx-wxt5x0 wxt5x0.py: wind values dropped.
    stream.extend(
        b"0R0,Dn=000#,Dm=106#,Dx=182#,Sn=1.1#,Sm=4.0#,Sx=6.6#,Ta=16.0C,Ua=50.0P,Pa=1018.1H\n",
    );
    // dwkennedy/wxt536 test.out line 2.
    stream.extend(b"dud line\r\n");
    // WMT700 Series User Guide M211095EN-K, data message 25; then with a wrong checksum.
    stream.extend(b"$03.22,75.29,03.38,03.07,22.13,0,3E\r\n");
    stream.extend(b"$03.22,75.29,03.38,03.07,22.13,0,3F\r\n");
    write_slowly(&mut p.master, &stream, 11).await;

    let lines = h.lines(4, Duration::from_secs(5)).await;
    let tags = "weather,district=d3,gateway=gw-test,sensor_id=wx-pole-1";
    let bodies: Vec<&str> = lines.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        vec![
            format!("{tags} wind_dir_avg_deg=283,wind_dir_max_deg=31,wind_dir_min_deg=236,wind_speed_avg_ms=1,wind_speed_max_ms=2.2,wind_speed_min_ms=0"),
            format!("{tags} air_temp_c=23.6,pressure_hpa=1026.6,rh_pct=14.2"),
            format!("{tags} air_temp_c=16,pressure_hpa=1018.1,rh_pct=50"),
            format!("{tags} sonic_temp_c=22.13,status_code=0i,wind_dir_avg_deg=75.29,wind_speed_avg_ms=3.22,wind_speed_max_ms=3.38,wind_speed_min_ms=3.07"),
        ]
    );
    // Receipt-stamped, recent, and one series kept 1 ms apart at least.
    let now = ioc_gateway::clock::now_ns();
    for w in lines.windows(2) {
        assert!(w[1].1 >= w[0].1 + 1_000_000, "{lines:?}");
    }
    assert!(lines.iter().all(|(_, ts)| now - ts < 30_000_000_000));

    // A message cut off by a power dip: counted once the line is idle.
    p.master.write_all(b"0R2,Ta=23.6C,Ua=1").unwrap();
    wait_for("faults counted", Duration::from_secs(3), || {
        h.status("wx-pole").is_some_and(|s| s.bad_frames == 3)
    })
    .await;
    assert_eq!(
        h.status("wx-pole").unwrap().bad_by_reason,
        BTreeMap::from([
            ("checksum".to_string(), 1),
            ("noise".to_string(), 1),
            ("truncated".to_string(), 1),
        ])
    );
    h.no_more_lines(Duration::from_millis(300)).await;
    h.stop(task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_weather_station_is_asked_every_interval_and_answers() {
    let mut h = harness();
    let p = pty();
    let mut c = cfg("wx-polled", &p.path, SerialProtocol::Vaisala);
    c.poll = Some("0R0".into());
    c.poll_interval_ms = 300;
    let task = h.start(c);
    h.up("wx-polled").await;

    // The station: reads each poll from the line and answers with the composite message of the
    // WXT530 guide §7.2.9 (printed there over two lines; one line on the wire).
    let mut master = p.master.try_clone().unwrap();
    let station = std::thread::spawn(move || {
        let mut polls = Vec::new();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while polls.len() < 3 {
            let n = master.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            while let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
                let cmd: Vec<u8> = got.drain(..end + 2).collect();
                polls.push((String::from_utf8(cmd).unwrap(), Instant::now()));
                master
                    .write_all(b"0R0,Dx=005D,Sx=2.8M,Ta=23.0C,Ua=30.0P,Pa=1028.2H,Rc=0.00M,Rd=10s,Th=23.6C\r\n")
                    .unwrap();
            }
        }
        polls
    });
    let lines = h.lines(3, Duration::from_secs(5)).await;
    let polls = station.join().unwrap();
    assert!(polls.iter().all(|(cmd, _)| cmd == "0R0\r\n"), "{polls:?}");
    for w in polls.windows(2) {
        // Every interval, not faster (the interval is a floor; a loaded box may be later).
        assert!(w[1].1 - w[0].1 >= Duration::from_millis(250), "{polls:?}");
    }
    let tags = "weather,gateway=gw-test,sensor_id=wx-polled-1";
    for (body, _) in &lines {
        assert_eq!(
            body,
            &format!("{tags} air_temp_c=23,heater_temp_c=23.6,pressure_hpa=1028.2,rain_duration_s=10,rain_mm=0,rh_pct=30,wind_dir_max_deg=5,wind_speed_max_ms=2.8")
        );
    }
    h.stop(task).await;
}
