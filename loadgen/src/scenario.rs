//! Boot sequences: the steps every machine of a run goes through, from a scenario file
//! (`--scenario FILE`) or, without one, the one file of the command line.
//!
//! A scenario is a small TOML file (the README documents it; `examples/hall.toml` is one):
//!
//! ```toml
//! profile = "ipxe"            # the steps' default firmware profile (optional)
//!
//! [[step]]
//! file = "shimx64.efi"
//! profile = "edk2"            # overrides the default
//! sha256 = "9f86d081…"        # optional: the bytes must hash to this
//!
//! [[step]]
//! file = "vmlinuz"
//! think = "200ms"             # optional: a pause before the step (the boot loader working)
//! blksize = 1408              # optional: replaces the profile's (so does `windowsize`, `tsize`)
//! ```
//!
//! A [`Sequence`] is what the event loop runs: each step becomes one transfer ([`Leg`]), or two
//! for a profile that probes the size first (edk2), each from its own socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ringtftp::packet::Mode;
use serde::Deserialize;

use crate::client::{emit_rrq, Config, Expect};
use crate::profile::{Ask, Overrides, Profile, PROBE_GAP};

/// One step of a boot, before it is turned into transfers.
#[derive(Debug, Clone)]
pub struct Step {
    /// The file, as the server names it.
    pub file: String,
    /// The firmware that fetches it; `None` asks for no option but those overridden.
    pub profile: Option<Profile>,
    /// A pause before the step.
    pub think: Duration,
    /// What the bytes must be.
    pub expect: Expect,
    /// The step's own options, over the profile's.
    pub overrides: Overrides,
}

/// What the command line sets for every step.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The transfer mode.
    pub mode: Mode,
    /// `--timeout`, if given: else the profile's, else a second.
    pub timeout: Option<Duration>,
    /// `--send-timeout-option`.
    pub timeout_option: bool,
    /// `--retries`.
    pub retries: u32,
    /// `--blksize`, `--windowsize`, `--tsize`: over every step's and profile's.
    pub overrides: Overrides,
}

impl Default for Defaults {
    /// Octet, no override, five retries of the profile's timer.
    fn default() -> Self {
        Self {
            mode: Mode::Octet,
            timeout: None,
            timeout_option: false,
            retries: 5,
            overrides: Overrides::default(),
        }
    }
}

/// A whole boot, as the event loop runs it.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// The steps, for the reports.
    pub steps: Vec<StepInfo>,
    /// The transfers, in order.
    pub legs: Vec<Leg>,
}

/// A step as the reports name it.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// The file.
    pub file: String,
    /// The profile's name, or `-`.
    pub profile: String,
    /// The options the download asks for, as `name=value` words.
    pub options: String,
}

/// One transfer of a boot.
#[derive(Debug, Clone)]
pub struct Leg {
    /// The index of its step.
    pub step: usize,
    /// How long after the previous transfer (or the power-on) its RRQ goes out.
    pub delay: Duration,
    /// What it asks for and checks.
    pub config: Config,
    /// Its RRQ, built once.
    pub rrq: Vec<u8>,
}

/// The retransmission timer when neither the command line nor the profile sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

impl Sequence {
    /// The transfers of `steps`, with the command line's settings.
    pub fn build(steps: &[Step], defaults: &Defaults) -> Result<Self> {
        if steps.is_empty() {
            bail!("a boot needs at least one step");
        }
        let mut infos = Vec::new();
        let mut legs = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let ask = step
                .profile
                .map_or(Ask::default(), Profile::ask)
                .with(&step.overrides)
                .with(&defaults.overrides);
            let timeout = defaults
                .timeout
                .or(ask.timeout_option)
                .unwrap_or(DEFAULT_TIMEOUT);
            if timeout.is_zero() || timeout > Duration::from_secs(255) {
                bail!("the timeout must lie within 1ms..=255s");
            }
            let config = Config {
                mode: defaults.mode,
                blksize: ask.blksize,
                windowsize: ask.windowsize,
                tsize: ask.tsize,
                timeout,
                timeout_option: defaults.timeout_option || ask.timeout_option.is_some(),
                retries: defaults.retries,
                expect: step.expect.clone(),
                probe: false,
                msftwindow: ask.msftwindow,
                reack_every_stray: ask.reack_every_stray,
            };
            let mut delay = step.think;
            if ask.probe {
                let probe = Config {
                    tsize: true,
                    expect: Expect::Anything,
                    probe: true,
                    ..config.clone()
                };
                legs.push(Leg {
                    step: index,
                    delay,
                    rrq: emit_rrq(&step.file, &probe)?,
                    config: probe,
                });
                delay = PROBE_GAP;
            }
            infos.push(StepInfo {
                file: step.file.clone(),
                profile: step.profile.map_or("-".to_owned(), |p| p.name().to_owned()),
                options: describe(&config),
            });
            legs.push(Leg {
                step: index,
                delay,
                rrq: emit_rrq(&step.file, &config)?,
                config,
            });
        }
        Ok(Self { steps: infos, legs })
    }

    /// The shortest retransmission timer of any transfer (the wheel's resolution).
    pub fn min_timeout(&self) -> Duration {
        self.legs
            .iter()
            .map(|l| l.config.timeout)
            .min()
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The largest block and window any transfer asks for.
    pub fn max_blksize_window(&self) -> (u16, u16) {
        self.legs.iter().fold((0, 1), |(b, w), l| {
            (
                b.max(l.config.blksize.unwrap_or(0)),
                w.max(l.config.windowsize.unwrap_or(1)),
            )
        })
    }
}

/// The options a transfer asks for, as `name=value` words.
pub fn describe(config: &Config) -> String {
    let mut words = Vec::new();
    if let Some(b) = config.blksize {
        words.push(format!("blksize={b}"));
    }
    if let Some(w) = config.windowsize {
        words.push(format!("windowsize={w}"));
    }
    if config.tsize {
        words.push("tsize".to_owned());
    }
    if config.timeout_option {
        words.push(format!("timeout={:?}", config.timeout));
    }
    if words.is_empty() {
        "no options".to_owned()
    } else {
        words.join(" ")
    }
}

/// A scenario file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The default profile of the steps.
    profile: Option<String>,
    step: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    file: String,
    profile: Option<String>,
    think: Option<String>,
    sha256: Option<String>,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    tsize: Option<bool>,
}

/// Reads the steps of the scenario file at `path`.
pub fn load(path: &Path) -> Result<Vec<Step>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scenario {}", path.display()))?;
    parse(&text).with_context(|| format!("scenario {}", path.display()))
}

/// The steps of a scenario's text.
pub fn parse(text: &str) -> Result<Vec<Step>> {
    let file: File = toml::from_str(text)?;
    let profile = |name: Option<&String>| -> Result<Option<Profile>> {
        name.map(|n| Profile::parse(n))
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    let default = profile(file.profile.as_ref())?;
    if file.step.is_empty() {
        bail!("no [[step]]");
    }
    file.step
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = i + 1;
            if let Some(b) = s.blksize {
                if !(ringtftp::options::BLKSIZE_MIN..=ringtftp::options::BLKSIZE_MAX).contains(&b) {
                    bail!("step {n}: blksize {b} is outside RFC 2348's range");
                }
            }
            if s.windowsize == Some(0) {
                bail!("step {n}: windowsize 0");
            }
            Ok(Step {
                file: s.file.clone(),
                profile: profile(s.profile.as_ref())
                    .with_context(|| format!("step {n}"))?
                    .or(default),
                think: match &s.think {
                    Some(t) => crate::parse_duration(t)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("step {n}: think"))?,
                    None => Duration::ZERO,
                },
                expect: match &s.sha256 {
                    Some(h) => Expect::Sha256(
                        crate::parse_sha256(h)
                            .map_err(anyhow::Error::msg)
                            .with_context(|| format!("step {n}: sha256"))?,
                    ),
                    None => Expect::Anything,
                },
                overrides: Overrides {
                    blksize: s.blksize,
                    windowsize: s.windowsize,
                    tsize: s.tsize.unwrap_or(false),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALL: &str = r#"
        profile = "ipxe"
        [[step]]
        file = "shimx64.efi"
        profile = "edk2"
        sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        [[step]]
        file = "grub.cfg"
        think = "20ms"
        [[step]]
        file = "vmlinuz"
        profile = "grub"
        blksize = 1408
    "#;

    #[test]
    fn a_scenario_becomes_legs_with_probes_and_overrides() {
        let steps = parse(HALL).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].profile, Some(Profile::Ipxe), "the default profile");
        assert_eq!(steps[1].think, Duration::from_millis(20));
        assert!(matches!(steps[0].expect, Expect::Sha256(h) if h[0] == 0xe3));
        let defaults = Defaults {
            retries: 5,
            ..Defaults::default()
        };
        let seq = Sequence::build(&steps, &defaults).unwrap();
        // edk2's step is a probe and a download.
        assert_eq!(seq.legs.len(), 4);
        let (probe, fetch) = (&seq.legs[0], &seq.legs[1]);
        assert!(probe.config.probe && probe.config.tsize);
        assert!(!fetch.config.probe && !fetch.config.tsize);
        assert_eq!(fetch.delay, PROBE_GAP);
        assert_eq!(
            probe.rrq,
            b"\x00\x01shimx64.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x004\x00"
        );
        assert_eq!(
            seq.legs[3].config.blksize,
            Some(1408),
            "the step's override"
        );
        assert_eq!(seq.steps[2].options, "blksize=1408 tsize");
        assert_eq!(seq.min_timeout(), DEFAULT_TIMEOUT);
        assert_eq!(seq.max_blksize_window(), (1468, 4));

        // The command line wins over both.
        let defaults = Defaults {
            overrides: Overrides {
                blksize: Some(512),
                ..Overrides::default()
            },
            ..defaults
        };
        let seq = Sequence::build(&steps, &defaults).unwrap();
        assert!(seq.legs.iter().all(|l| l.config.blksize == Some(512)));
    }

    #[test]
    fn uboot_sends_its_timer_as_an_option() {
        let step = Step {
            file: "uImage".into(),
            profile: Some(Profile::Uboot),
            think: Duration::ZERO,
            expect: Expect::Anything,
            overrides: Overrides::default(),
        };
        let seq = Sequence::build(&[step], &Defaults::default()).unwrap();
        assert_eq!(
            seq.legs[0].rrq,
            b"\x00\x01uImage\x00octet\x00blksize\x001468\x00timeout\x005\x00"
        );
        assert_eq!(seq.legs[0].config.timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_scenarios_say_where() {
        for (text, want) in [
            ("[[step]]\nfile = \"a\"\nprofile = \"ofw\"", "step 1"),
            ("[[step]]\nfile = \"a\"\nthink = \"soon\"", "think"),
            ("[[step]]\nfile = \"a\"\nblksize = 4", "blksize"),
            ("[[step]]\nfile = \"a\"\ncolour = 1", "colour"),
            ("profile = \"ipxe\"", "step"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
