//! `telemetry.png`: the training curves.

use std::path::Path;

use crate::config::PlotSettings;

pub fn draw(_settings: &PlotSettings, _dir: &Path) -> Result<(), String> {
    Ok(())
}
