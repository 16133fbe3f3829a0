//! Deterministic synthetic image domains for the demo (no download needed).
//!
//! `source`: a broad domain of geometric shapes (discs, rings, boxes, triangles, bars) in
//! random colours over plain, striped or checked backgrounds. `target`: a narrow family of
//! stylised faces (head, eyes with pupils, a mouth, sometimes ears or hair), a composition the
//! source domain never shows. Drawn at 4× and box-downsampled for smooth edges.

use anyhow::{bail, Context, Result};
use image::{imageops, Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_ellipse_mut, draw_filled_rect_mut, draw_polygon_mut,
};
use imageproc::point::Point;
use imageproc::rect::Rect;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

const SUPERSAMPLE: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Domain {
    Source,
    Target,
}

fn color(rng: &mut ChaCha8Rng) -> Rgb<u8> {
    Rgb([rng.random(), rng.random(), rng.random()])
}

fn pastel(rng: &mut ChaCha8Rng) -> Rgb<u8> {
    Rgb([
        rng.random_range(170..=250),
        rng.random_range(170..=250),
        rng.random_range(170..=250),
    ])
}

fn background(img: &mut RgbImage, rng: &mut ChaCha8Rng) {
    let (a, b) = (color(rng), color(rng));
    let kind = rng.random_range(0..3);
    let period = rng.random_range(4..12) * SUPERSAMPLE;
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let second = match kind {
                0 => false,
                1 => (x / period) % 2 == 1,
                _ => ((x / period) + (y / period)) % 2 == 1,
            };
            img.put_pixel(x, y, if second { b } else { a });
        }
    }
}

fn shape(img: &mut RgbImage, rng: &mut ChaCha8Rng) {
    let s = img.width() as f32;
    let (cx, cy) = (
        rng.random_range(0.2..0.8) * s,
        rng.random_range(0.2..0.8) * s,
    );
    let r = rng.random_range(0.1..0.3) * s;
    let c = color(rng);
    match rng.random_range(0..5) {
        0 => draw_filled_circle_mut(img, (cx as i32, cy as i32), r as i32, c),
        1 => {
            draw_filled_circle_mut(img, (cx as i32, cy as i32), r as i32, c);
            draw_filled_circle_mut(img, (cx as i32, cy as i32), (r * 0.55) as i32, color(rng));
        }
        2 => {
            let (w, h) = (
                r * rng.random_range(0.8..2.0),
                r * rng.random_range(0.8..2.0),
            );
            draw_filled_rect_mut(
                img,
                Rect::at((cx - w / 2.0) as i32, (cy - h / 2.0) as i32)
                    .of_size(w as u32 + 1, h as u32 + 1),
                c,
            );
        }
        3 => {
            let a0: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let pts: Vec<Point<i32>> = (0..3)
                .map(|k| {
                    let a = a0 + k as f32 * std::f32::consts::TAU / 3.0;
                    Point::new(
                        (cx + r * 1.3 * a.cos()) as i32,
                        (cy + r * 1.3 * a.sin()) as i32,
                    )
                })
                .collect();
            draw_polygon_mut(img, &pts, c);
        }
        _ => {
            let a: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let (dx, dy) = (a.cos() * r * 1.6, a.sin() * r * 1.6);
            let (nx, ny) = (-a.sin() * r * 0.3, a.cos() * r * 0.3);
            let pts = [
                Point::new((cx - dx - nx) as i32, (cy - dy - ny) as i32),
                Point::new((cx + dx - nx) as i32, (cy + dy - ny) as i32),
                Point::new((cx + dx + nx) as i32, (cy + dy + ny) as i32),
                Point::new((cx - dx + nx) as i32, (cy - dy + ny) as i32),
            ];
            draw_polygon_mut(img, &pts, c);
        }
    }
}

const SKIN: [[u8; 3]; 6] = [
    [241, 194, 125],
    [224, 172, 105],
    [198, 134, 66],
    [141, 85, 36],
    [120, 200, 120],
    [140, 170, 230],
];

fn face(img: &mut RgbImage, rng: &mut ChaCha8Rng) {
    let s = img.width() as f32;
    let bg = pastel(rng);
    draw_filled_rect_mut(img, Rect::at(0, 0).of_size(img.width(), img.height()), bg);
    let (cx, cy) = (
        s * rng.random_range(0.44..0.56),
        s * rng.random_range(0.48..0.58),
    );
    let (rx, ry) = (
        s * rng.random_range(0.27..0.34),
        s * rng.random_range(0.31..0.38),
    );
    let base = SKIN[rng.random_range(0..SKIN.len())];
    let jitter =
        |v: u8, rng: &mut ChaCha8Rng| (v as i32 + rng.random_range(-12..=12)).clamp(0, 255) as u8;
    let skin = Rgb([
        jitter(base[0], rng),
        jitter(base[1], rng),
        jitter(base[2], rng),
    ]);
    if rng.random_bool(0.4) {
        // ears
        for side in [-1.0f32, 1.0] {
            draw_filled_circle_mut(
                img,
                ((cx + side * rx * 0.95) as i32, (cy - ry * 0.1) as i32),
                (rx * 0.25) as i32,
                skin,
            );
        }
    }
    draw_filled_ellipse_mut(img, (cx as i32, cy as i32), rx as i32, ry as i32, skin);
    if rng.random_bool(0.5) {
        // hair: a cap over the top of the head
        let hair = Rgb([
            rng.random_range(10..120),
            rng.random_range(10..80),
            rng.random_range(0..60),
        ]);
        draw_filled_ellipse_mut(
            img,
            (cx as i32, (cy - ry * 0.75) as i32),
            (rx * 1.02) as i32,
            (ry * 0.4) as i32,
            hair,
        );
    }
    let eye_dx = rx * rng.random_range(0.33..0.45);
    let eye_y = cy - ry * rng.random_range(0.05..0.2);
    let eye_r = rx * rng.random_range(0.14..0.2);
    let pupil_shift = rng.random_range(-0.4..0.4) * eye_r;
    for side in [-1.0f32, 1.0] {
        let ex = cx + side * eye_dx;
        draw_filled_circle_mut(
            img,
            (ex as i32, eye_y as i32),
            eye_r as i32,
            Rgb([250, 250, 250]),
        );
        draw_filled_circle_mut(
            img,
            ((ex + pupil_shift) as i32, eye_y as i32),
            (eye_r * 0.55) as i32,
            Rgb([20, 20, 30]),
        );
    }
    // mouth: a smile, a frown or a straight line, drawn as a thick polygonal arc
    let mouth_y = cy + ry * rng.random_range(0.35..0.5);
    let mw = rx * rng.random_range(0.35..0.6);
    let curve = rx * rng.random_range(-0.15..0.3);
    let thick = (s * 0.035).max(2.0);
    let n = 8;
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for k in 0..=n {
        let u = k as f32 / n as f32 * 2.0 - 1.0;
        let y = mouth_y + curve * (1.0 - u * u);
        top.push(Point::new((cx + u * mw) as i32, (y - thick / 2.0) as i32));
        bottom.push(Point::new((cx + u * mw) as i32, (y + thick / 2.0) as i32));
    }
    bottom.reverse();
    top.extend(bottom);
    top.dedup();
    if top.first() == top.last() {
        top.pop();
    }
    let lips = Rgb([
        rng.random_range(120..200),
        rng.random_range(20..60),
        rng.random_range(30..70),
    ]);
    draw_polygon_mut(img, &top, lips);
}

/// One image of `domain` from image index `i` of the stream with `seed`.
pub fn render(domain: Domain, size: u32, seed: u64, i: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i));
    let big = size * SUPERSAMPLE;
    let mut img = RgbImage::new(big, big);
    match domain {
        Domain::Source => {
            background(&mut img, &mut rng);
            for _ in 0..rng.random_range(1..=3) {
                shape(&mut img, &mut rng);
            }
        }
        Domain::Target => face(&mut img, &mut rng),
    }
    imageops::resize(&img, size, size, imageops::FilterType::Triangle)
}

/// Smallest and largest `--size` (images are drawn at 4× before downsampling).
pub const MIN_SIZE: u32 = 8;
pub const MAX_SIZE: u32 = 1024;
/// Most images one `data synth` command writes.
pub const MAX_NUM: usize = 100_000;

/// Checks `write_domain`'s arguments (named by their `data synth` flags).
pub fn check_args(num: usize, size: u32, first: u64) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        bail!("--size {size} is outside {MIN_SIZE}..={MAX_SIZE} pixels");
    }
    if num == 0 {
        bail!("--num must be at least 1");
    }
    if num > MAX_NUM {
        bail!("--num {num} is above the limit of {MAX_NUM} images per command");
    }
    if first
        .checked_add(num as u64)
        .is_none_or(|end| end > 1_000_000_000_000)
    {
        bail!("--first {first} is too large (image indices must stay below 10^12)");
    }
    Ok(())
}

/// Writes `num` PNGs `DIR/{domain}_{i:06}.png`, all or none: they are rendered first (a stop
/// request ends the command there, leaving the folder as it was) into a hidden staging folder
/// beside `DIR`. A new or empty `DIR` is then replaced by it in one rename; images added to an
/// existing set are renamed in one by one (a kill in those milliseconds can leave part of them).
/// A second writer of `DIR` is refused.
pub fn write_domain(
    domain: Domain,
    num: usize,
    size: u32,
    seed: u64,
    first: u64,
    dir: &Path,
) -> Result<()> {
    check_args(num, size, first)?;
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        bail!("--out {} exists and is not a folder", dir.display());
    }
    // `new/../out` names no folder `new`.
    let dir = crate::util::paths::resolve(dir);
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else {
        bail!("--out {} does not name a folder", dir.display())
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let _lock = crate::util::owned_dir::OutputLock::take(parent, base, &dir)?;
    let mut stem = std::ffi::OsString::from(".");
    stem.push(base);
    stem.push(".synth-staging");
    // A killed earlier run's staging folder holds no finished set: removed.
    for l in crate::util::files::dead_leftovers(parent)
        .into_iter()
        .filter(|l| l.stem == stem && l.is_dir)
    {
        let _ = std::fs::remove_dir_all(&l.path);
    }
    let name = match domain {
        Domain::Source => "source",
        Domain::Target => "target",
    };
    let mut new = Vec::new();
    for i in first..first + num as u64 {
        crate::util::stop::check()?;
        let file = format!("{name}_{i:06}.png");
        let path = dir.join(&file);
        let bytes = crate::io::images::png_bytes(&render(domain, size, seed, i))?;
        // Rewriting the same image is harmless (a re-run); anything else of that name is kept.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.is_file() && crate::util::files::read_file(&path).is_ok_and(|b| b == bytes) {
                continue;
            }
            bail!(
                "--out {} already holds a different {file}; choose another folder (or --first)",
                dir.display()
            );
        }
        new.push((file, bytes));
    }
    let mut staging = stem;
    staging.push(format!("-{}", std::process::id()));
    let staging = parent.join(staging);
    let written = crate::util::owned_dir::write_files(&staging, &new).and_then(|_| {
        let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
        if empty && !new.is_empty() {
            // Renaming onto an empty folder replaces it: the whole set appears at once.
            return std::fs::rename(&staging, &dir)
                .with_context(|| format!("cannot move the images into {}", dir.display()));
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for (file, _) in &new {
            std::fs::rename(staging.join(file), dir.join(file))
                .with_context(|| format!("cannot move {file} into {}", dir.display()))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = render(Domain::Target, 32, 1, 5);
        assert_eq!(a, render(Domain::Target, 32, 1, 5));
        assert_ne!(a, render(Domain::Target, 32, 1, 6));
        let s = render(Domain::Source, 32, 1, 5);
        assert_eq!(s.dimensions(), (32, 32));
        // Faces have dark pupils on white eyes: both extremes occur (at a size where a pupil
        // covers whole pixels).
        let big = render(Domain::Target, 128, 1, 5);
        assert!(big.pixels().any(|p| p.0.iter().all(|&c| c < 60)));
        assert!(big.pixels().any(|p| p.0.iter().all(|&c| c > 200)));
    }

    #[test]
    fn bounds() {
        for (num, size, first, needle) in [
            (1, 100_000, 0, "--size 100000"),
            (1, 4, 0, "--size 4"),
            (0, 32, 0, "--num must"),
            (usize::MAX, 32, 0, "--num"),
            (10, 32, u64::MAX, "--first"),
        ] {
            let e = check_args(num, size, first).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        check_args(MAX_NUM, MAX_SIZE, 0).unwrap();
    }

    #[test]
    fn a_set_appears_whole_and_a_dead_writers_staging_goes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("set");
        let stale = dir.path().join(".set.synth-staging-999999999");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("source_000000.png"), b"half").unwrap();
        write_domain(Domain::Source, 3, 8, 0, 0, &out).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["set"]);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
        // Added to an existing set; `new/../` makes no folder.
        write_domain(Domain::Source, 2, 8, 0, 3, &dir.path().join("new/../set")).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 5);
        assert!(!dir.path().join("new").exists());
    }
}
