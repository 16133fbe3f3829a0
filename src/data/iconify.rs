//! Iconify JSON icon sets (the `@iconify-json/*` npm packages) as stand-alone SVG files.
//!
//! An icon set is one `icons.json`: a default box (`width`, `height`, `left`, `top`) and, per
//! icon, the SVG body with its own box where it differs. The format is documented at
//! <https://iconify.design/docs/types/iconify-json.html>; an icon becomes
//! `<svg xmlns=… viewBox="left top width height" width=… height=…>BODY</svg>`, which is what
//! Iconify's own `iconToSVG` writes for an icon without transformations.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Longest side over shortest side of the icons kept: a wordmark four times as wide as it is
/// tall would be a thin stripe across a 32-px square, not an icon.
pub const MAX_ASPECT: f64 = 1.5;

/// Iconify's default box side when neither the icon nor the set gives one.
const DEFAULT_SIDE: f64 = 16.0;

#[derive(Deserialize)]
struct IconSet {
    prefix: String,
    icons: BTreeMap<String, Icon>,
    #[serde(flatten)]
    default_box: IconBox,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct IconBox {
    left: Option<f64>,
    top: Option<f64>,
    width: Option<f64>,
    height: Option<f64>,
}

#[derive(Deserialize)]
struct Icon {
    body: String,
    #[serde(flatten)]
    own_box: IconBox,
    #[serde(default)]
    hidden: bool,
    /// Transformations: none of the pinned sets uses them on an icon (only on aliases, which
    /// are left out), so an icon that has one is refused rather than drawn wrongly.
    #[serde(default)]
    rotate: Option<serde_json::Value>,
    #[serde(default, rename = "hFlip")]
    h_flip: Option<serde_json::Value>,
    #[serde(default, rename = "vFlip")]
    v_flip: Option<serde_json::Value>,
}

/// What one icon set holds: its icons as SVG files, sorted by name, and how many were left out.
pub struct Icons {
    /// `(icon name, SVG bytes)`.
    pub svgs: Vec<(String, Vec<u8>)>,
    pub hidden: usize,
    pub too_long: usize,
}

/// The visible icons of an Iconify JSON file whose box is at most [`MAX_ASPECT`] long.
pub fn icons(json: &[u8]) -> Result<Icons> {
    let set: IconSet =
        serde_json::from_slice(json).context("not an Iconify JSON icon set (icons.json)")?;
    let mut out = Icons {
        svgs: Vec::new(),
        hidden: 0,
        too_long: 0,
    };
    for (name, icon) in &set.icons {
        if icon.hidden {
            out.hidden += 1;
            continue;
        }
        if icon.rotate.is_some() || icon.h_flip.is_some() || icon.v_flip.is_some() {
            bail!(
                "icon {}:{name} is rotated or flipped, which a3ft does not render",
                set.prefix
            );
        }
        let pick =
            |own: Option<f64>, set: Option<f64>, default: f64| own.or(set).unwrap_or(default);
        let (b, d) = (icon.own_box, set.default_box);
        let left = pick(b.left, d.left, 0.0);
        let top = pick(b.top, d.top, 0.0);
        let width = pick(b.width, d.width, DEFAULT_SIDE);
        let height = pick(b.height, d.height, DEFAULT_SIDE);
        if !(width.is_finite()
            && height.is_finite()
            && left.is_finite()
            && top.is_finite()
            && width > 0.0
            && height > 0.0)
        {
            bail!(
                "icon {}:{name} has the box {left} {top} {width} {height}",
                set.prefix
            );
        }
        if width.max(height) > MAX_ASPECT * width.min(height) {
            out.too_long += 1;
            continue;
        }
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" height="{height}" viewBox="{left} {top} {width} {height}">{}</svg>"#,
            icon.body
        );
        out.svgs.push((name.clone(), svg.into_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_hidden_and_long_icons() {
        let json = br##"{"prefix":"t","width":24,"height":24,"icons":{
            "dot":{"body":"<circle cx=\"12\" cy=\"12\" r=\"8\" fill=\"#f00\"/>"},
            "wide":{"body":"<rect width=\"100\" height=\"10\"/>","width":100,"height":10},
            "gone":{"body":"<rect/>","hidden":true},
            "moved":{"body":"<rect/>","left":-2,"width":20.5}},
            "aliases":{"dot2":{"parent":"dot"}}}"##;
        let icons = icons(json).unwrap();
        assert_eq!((icons.hidden, icons.too_long), (1, 1));
        let names: Vec<&str> = icons.svgs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dot", "moved"]);
        let moved = String::from_utf8(icons.svgs[1].1.clone()).unwrap();
        assert!(
            moved.contains(r#"width="20.5" height="24" viewBox="-2 0 20.5 24""#),
            "{moved}"
        );
        // What it writes renders: a red dot in the middle of a white square.
        let img = crate::data::rasterize::svg_on_white(&icons.svgs[0].1, 24).unwrap();
        assert_eq!(img.get_pixel(12, 12).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255]);
    }

    #[test]
    fn refuses_what_it_cannot_draw() {
        let flipped = br#"{"prefix":"t","icons":{"f":{"body":"<rect/>","hFlip":true}}}"#;
        assert!(icons(flipped)
            .err()
            .unwrap()
            .to_string()
            .contains("t:f is rotated or flipped"));
        let zero = br#"{"prefix":"t","icons":{"z":{"body":"<rect/>","width":0}}}"#;
        assert!(icons(zero).is_err());
        assert!(icons(b"[1,2]").is_err());
    }
}
