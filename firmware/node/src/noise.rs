//! Sound level from a microphone amplifier on an ADC channel.
//!
//! embedded-hal 1.0 has no ADC trait, so this module defines the small [`AdcChannel`] trait a
//! board implements for its converter. [`NoiseMeter::measure`] takes a block of samples, removes
//! the DC bias of the amplifier (the mean), computes the RMS in ADC counts and converts it to a
//! level: `dB = 20 * log10(rms / reference_rms) + offset_db`, where `reference_rms` and
//! `offset_db` come from calibration against a sound level meter (e.g. `reference_rms` = counts
//! RMS of a 94 dB calibrator tone and `offset_db` = 94).

/// One ADC channel that yields raw conversions.
pub trait AdcChannel {
    /// The converter's error.
    type Error;
    /// Take one conversion (raw counts, any bias).
    fn read_sample(&mut self) -> Result<u16, Self::Error>;
}

/// Calibration and block size of a noise measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseConfig {
    /// Samples per measurement (at least 2).
    pub samples: u16,
    /// RMS in counts that corresponds to `offset_db`.
    pub reference_rms: f32,
    /// Level in dB at `reference_rms`.
    pub offset_db: f32,
    /// RMS below this (counts) means the microphone is dead or unplugged.
    pub min_rms: f32,
}

/// A failed noise measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseError<E> {
    /// The ADC failed.
    Adc(E),
    /// The signal is flat (RMS below `min_rms`): no microphone signal at all.
    Flat,
    /// The configuration cannot produce a level (fewer than 2 samples, reference not positive).
    BadConfig,
}

/// Level in dB from an RMS in counts.
pub fn level_db(rms: f32, reference_rms: f32, offset_db: f32) -> f32 {
    20.0 * libm::log10f(rms / reference_rms) + offset_db
}

/// RMS of `samples` after removing their mean (the DC bias). 0 for an empty slice.
pub fn ac_rms(samples: &[u16]) -> f32 {
    let mut acc = RmsAccumulator::default();
    for &s in samples {
        acc.add(s);
    }
    acc.rms()
}

#[derive(Debug, Default, Clone, Copy)]
struct RmsAccumulator {
    n: u64,
    sum: u64,
    sum_sq: u64,
}

impl RmsAccumulator {
    fn add(&mut self, sample: u16) {
        let s = u64::from(sample);
        self.n += 1;
        self.sum += s;
        self.sum_sq += s * s;
    }

    fn rms(&self) -> f32 {
        if self.n == 0 {
            return 0.0;
        }
        let n = self.n as f64;
        let mean = self.sum as f64 / n;
        let variance = (self.sum_sq as f64 / n - mean * mean).max(0.0);
        libm::sqrt(variance) as f32
    }
}

/// A microphone on an ADC channel.
#[derive(Debug)]
pub struct NoiseMeter<A> {
    adc: A,
    config: NoiseConfig,
}

impl<A: AdcChannel> NoiseMeter<A> {
    /// A meter over `adc` with `config`.
    pub fn new(adc: A, config: NoiseConfig) -> Self {
        Self { adc, config }
    }

    /// Sample a block and return the level in dB.
    pub fn measure(&mut self) -> Result<f32, NoiseError<A::Error>> {
        if self.config.samples < 2 || self.config.reference_rms <= 0.0 {
            return Err(NoiseError::BadConfig);
        }
        let mut acc = RmsAccumulator::default();
        for _ in 0..self.config.samples {
            acc.add(self.adc.read_sample().map_err(NoiseError::Adc)?);
        }
        let rms = acc.rms();
        if rms < self.config.min_rms || rms <= 0.0 {
            return Err(NoiseError::Flat);
        }
        Ok(level_db(
            rms,
            self.config.reference_rms,
            self.config.offset_db,
        ))
    }

    /// Give back the ADC channel.
    pub fn release(self) -> A {
        self.adc
    }
}
