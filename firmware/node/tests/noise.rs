//! Noise meter: RMS after DC removal, dB conversion with calibration, ADC errors, flat signal.

use ioc_node::noise::*;

/// ADC double that replays samples and can fail.
struct ReplayAdc {
    samples: Vec<u16>,
    pos: usize,
    fail_at: Option<usize>,
}

impl AdcChannel for ReplayAdc {
    type Error = &'static str;
    fn read_sample(&mut self) -> Result<u16, Self::Error> {
        if self.fail_at == Some(self.pos) {
            return Err("adc overrun");
        }
        let s = self.samples[self.pos % self.samples.len()];
        self.pos += 1;
        Ok(s)
    }
}

fn square(bias: u16, amplitude: u16, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                bias + amplitude
            } else {
                bias - amplitude
            }
        })
        .collect()
}

const CAL: NoiseConfig = NoiseConfig {
    samples: 256,
    reference_rms: 100.0,
    offset_db: 94.0,
    min_rms: 0.5,
};

#[test]
fn rms_removes_bias() {
    assert_eq!(ac_rms(&square(2048, 100, 256)), 100.0);
    assert_eq!(ac_rms(&[]), 0.0);
    assert_eq!(ac_rms(&[7, 7, 7]), 0.0);
}

#[test]
fn level_formula() {
    assert_eq!(level_db(100.0, 100.0, 94.0), 94.0);
    assert!((level_db(10.0, 100.0, 94.0) - 74.0).abs() < 1e-4);
    assert!((level_db(1000.0, 100.0, 94.0) - 114.0).abs() < 1e-4);
}

#[test]
fn measures_calibrated_level() {
    let adc = ReplayAdc {
        samples: square(2048, 10, 256),
        pos: 0,
        fail_at: None,
    };
    let mut meter = NoiseMeter::new(adc, CAL);
    let db = meter.measure().unwrap();
    assert!((db - 74.0).abs() < 1e-4, "{db}");
    assert_eq!(meter.release().pos, 256);
}

#[test]
fn adc_error_is_returned() {
    let adc = ReplayAdc {
        samples: square(2048, 10, 256),
        pos: 0,
        fail_at: Some(17),
    };
    let mut meter = NoiseMeter::new(adc, CAL);
    assert_eq!(meter.measure(), Err(NoiseError::Adc("adc overrun")));
}

#[test]
fn flat_signal_is_an_error() {
    let adc = ReplayAdc {
        samples: vec![2048],
        pos: 0,
        fail_at: None,
    };
    let mut meter = NoiseMeter::new(adc, CAL);
    assert_eq!(meter.measure(), Err(NoiseError::Flat));
}

#[test]
fn bad_config_is_an_error() {
    let adc = ReplayAdc {
        samples: vec![1, 2],
        pos: 0,
        fail_at: None,
    };
    let mut meter = NoiseMeter::new(adc, NoiseConfig { samples: 1, ..CAL });
    assert_eq!(meter.measure(), Err(NoiseError::BadConfig));
}
