//! `a3ft data fetch` without a network: each test builds a small fake npm tarball (PNGs with
//! alpha and SVGs under the expected folders), pins its real checksum in a hand-made
//! `DataSet`, and either seeds the cache with it or hands it over through a fake `npm`.

use a3ft::data::datasets::{self, DataSet, FetchOptions, Files, Format, Manifest, Source};
use a3ft::data::fetch::{integrity_of, NpmCache, Package};
use image::{Rgba, RgbaImage};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

fn png(img: &RgbaImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// 16×16: left half transparent *red* (must come out white, not red), right half opaque blue.
fn half_transparent() -> RgbaImage {
    RgbaImage::from_fn(16, 16, |x, _| {
        if x < 8 {
            Rgba([255, 0, 0, 0])
        } else {
            Rgba([0, 0, 255, 255])
        }
    })
}

const BAR_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10" fill="#ff0000"/></svg>"##;
const DOT_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="4" fill="#00ff00"/></svg>"##;

/// An Iconify icon set: a blue square in the set's 10×10 box, a red dot in its own 20×20 box,
/// a hidden icon, a wordmark too wide to keep, and an alias (never an image of its own).
const ICONS_JSON: &str = r##"{"prefix":"fake","width":10,"height":10,"icons":{
  "square":{"body":"<rect width=\"10\" height=\"10\" fill=\"#0000ff\"/>"},
  "dot":{"body":"<circle cx=\"10\" cy=\"10\" r=\"9\" fill=\"#ff0000\"/>","width":20,"height":20},
  "old":{"body":"<rect width=\"10\" height=\"10\"/>","hidden":true},
  "wordmark":{"body":"<rect width=\"40\" height=\"10\"/>","width":40}},
  "aliases":{"square-alt":{"parent":"square"}}}"##;

fn add(b: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, path, bytes).unwrap();
}

/// A fake package: 4 PNGs in the emoji folder (one a byte copy of another), files that must be
/// skipped (a sub-folder, another folder, another extension), 2 SVGs and a skipped sub-folder SVG.
fn fake_tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    add(
        &mut b,
        "package/package.json",
        br#"{"name":"fake","version":"1.0.0"}"#,
    );
    add(
        &mut b,
        "package/img/g/64/1f600.png",
        &png(&half_transparent()),
    );
    add(
        &mut b,
        "package/img/g/64/1f601.png",
        &png(&RgbaImage::from_pixel(16, 16, Rgba([0, 0, 0, 128]))),
    );
    add(
        &mut b,
        "package/img/g/64/1f602.png",
        &png(&RgbaImage::from_pixel(16, 16, Rgba([10, 200, 30, 255]))),
    );
    add(
        &mut b,
        "package/img/g/64/1f602-fe0f.png",
        &png(&RgbaImage::from_pixel(16, 16, Rgba([10, 200, 30, 255]))),
    );
    add(
        &mut b,
        "package/img/g/64/sub/nested.png",
        &png(&half_transparent()),
    );
    add(
        &mut b,
        "package/img/g/sheets/64.png",
        &png(&half_transparent()),
    );
    add(&mut b, "package/img/g/64/readme.txt", b"not an image");
    add(&mut b, "package/art/25.svg", BAR_SVG.as_bytes());
    add(&mut b, "package/art/25-b.svg", DOT_SVG.as_bytes());
    add(&mut b, "package/art/female/25.svg", DOT_SVG.as_bytes());
    add(&mut b, "package/icons.json", ICONS_JSON.as_bytes());
    b.into_inner().unwrap().finish().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    tgz: PathBuf,
    pkg: Package,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let tgz = root.join("fake-1.0.0.tgz");
        std::fs::write(&tgz, fake_tarball()).unwrap();
        let pkg = Package::new("fake", "1.0.0", &integrity_of(&tgz, "sha512-").unwrap());
        Fixture {
            _tmp: tmp,
            root,
            tgz,
            pkg,
        }
    }

    /// A cache that already holds the tarball, with an npm that does not exist (no network).
    fn seeded_cache(&self) -> NpmCache {
        let cache = NpmCache {
            dir: self.root.join("cache"),
            npm: "a3ft-test-no-such-npm".into(),
        };
        std::fs::create_dir_all(&cache.dir).unwrap();
        std::fs::copy(&self.tgz, cache.path_of(&self.pkg)).unwrap();
        cache
    }

    fn set(&self) -> DataSet {
        set_of(&self.pkg)
    }
}

fn set_of(pkg: &Package) -> DataSet {
    DataSet {
        name: "fake".into(),
        description: "test".into(),
        sources: vec![
            Source {
                package: pkg.clone(),
                files: Files::Folder {
                    folder: "package/img/g/64/".into(),
                    format: Format::Png,
                },
                prefix: "g-".into(),
                licence: "test".into(),
            },
            Source {
                package: pkg.clone(),
                files: Files::Folder {
                    folder: "package/art/".into(),
                    format: Format::Svg,
                },
                prefix: String::new(),
                licence: "test".into(),
            },
        ],
        notice: "test notice".into(),
    }
}

fn opts(size: u32, holdout: usize) -> FetchOptions {
    FetchOptions {
        size,
        holdout,
        seed: 0,
    }
}

/// Every file under `dir` by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn err(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn counts_white_compositing_and_svg_size() {
    let f = Fixture::new();
    let out = f.root.join("out");
    let m = datasets::fetch(&f.set(), &f.seeded_cache(), &out, &opts(8, 0)).unwrap();
    // 4 PNGs + 2 SVGs directly in their folders; 1f602-fe0f is a byte copy of 1f602.
    // Every file is kept; the copy counts once for the split.
    assert_eq!(
        (
            m.counts.found,
            m.counts.duplicates,
            m.counts.images,
            m.counts.distinct,
            m.counts.train,
            m.counts.holdout
        ),
        (6, 1, 6, 5, 6, 0)
    );
    assert_eq!(m.duplicates[0].kept, "g-1f602");
    assert_eq!(m.duplicates[0].dropped, vec!["g-1f602-fe0f".to_string()]);
    assert_eq!(
        m.packages.iter().map(|p| p.files).collect::<Vec<_>>(),
        vec![4, 2]
    );
    let names: Vec<_> = tree(&out).into_keys().collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "train/25-b.png",
            "train/25.png",
            "train/g-1f600.png",
            "train/g-1f601.png",
            "train/g-1f602-fe0f.png",
            "train/g-1f602.png"
        ]
    );

    // Transparent red became white; opaque blue stayed blue; 16 → 8 is an exact 2×2 average.
    let e = rgb(&out.join("train/g-1f600.png"));
    assert_eq!(e.dimensions(), (8, 8));
    assert!((0..8).all(|y| (0..4).all(|x| e.get_pixel(x, y).0 == [255, 255, 255])));
    assert!((0..8).all(|y| (4..8).all(|x| e.get_pixel(x, y).0 == [0, 0, 255])));
    // Half-transparent black on white is mid grey.
    assert!(rgb(&out.join("train/g-1f601.png"))
        .pixels()
        .all(|p| p.0 == [127, 127, 127]));

    // The 20×10 bar fills the width, centred, with white bands above and below.
    let bar = rgb(&out.join("train/25.png"));
    assert_eq!(bar.dimensions(), (8, 8));
    assert_eq!(bar.get_pixel(4, 4).0, [255, 0, 0]);
    assert_eq!(bar.get_pixel(4, 0).0, [255, 255, 255]);
    assert_eq!(bar.get_pixel(4, 7).0, [255, 255, 255]);
    let dot = rgb(&out.join("train/25-b.png"));
    assert_eq!(dot.get_pixel(4, 4).0, [0, 255, 0]);
    assert_eq!(dot.get_pixel(0, 0).0, [255, 255, 255]);

    // The manifest on disk is the one returned, and its hashes are those of the files.
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, m);
    assert_eq!(m.files.len(), 6);
    assert!(m
        .files
        .iter()
        .any(|r| r.path == "train/25.png" && r.source == "fake@1.0.0:package/art/25.svg"));
    assert_eq!(m.packages[0].package, f.pkg);
    assert_eq!(m.notice, "test notice");
    assert_eq!(
        a3ft::data::list_images(&out.join("train")).unwrap().len(),
        6
    );
}

#[test]
fn same_bytes_on_every_run() {
    let f = Fixture::new();
    let cache = f.seeded_cache();
    let (a, b) = (f.root.join("a"), f.root.join("b"));
    datasets::fetch(&f.set(), &cache, &a, &opts(12, 2)).unwrap();
    datasets::fetch(&f.set(), &cache, &b, &opts(12, 2)).unwrap();
    let first = tree(&a);
    assert_eq!(first, tree(&b));
    // Fetching again into the same folder is allowed and changes nothing.
    datasets::fetch(&f.set(), &cache, &a, &opts(12, 2)).unwrap();
    assert_eq!(first, tree(&a));
    // No staging or old folders are left beside it.
    let siblings: Vec<_> = std::fs::read_dir(&f.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(siblings.iter().all(|n| !n.starts_with('.')), "{siblings:?}");
}

#[test]
fn holdout_split_follows_the_hash_rule() {
    let f = Fixture::new();
    let out = f.root.join("out");
    let m = datasets::fetch(&f.set(), &f.seeded_cache(), &out, &opts(8, 2)).unwrap();
    let mut keyed: Vec<(String, &str)> = ["25", "25-b", "g-1f600", "g-1f601", "g-1f602"]
        .iter()
        .map(|n| (datasets::holdout_key(0, n), *n))
        .collect();
    keyed.sort();
    // Two distinct images are held out; the byte copy g-1f602-fe0f goes wherever g-1f602 goes.
    let mut expected: Vec<String> = keyed[..2].iter().map(|(_, n)| format!("{n}.png")).collect();
    if expected.iter().any(|n| n == "g-1f602.png") {
        expected.push("g-1f602-fe0f.png".into());
    }
    assert_eq!(
        (m.counts.train, m.counts.holdout),
        (6 - expected.len(), expected.len())
    );
    let mut held: Vec<String> = std::fs::read_dir(out.join("holdout"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(held, expected_sorted);
    assert_eq!(
        std::fs::read_dir(out.join("train")).unwrap().count(),
        6 - expected.len()
    );
    assert!(m.holdout_rule.contains("a3ft-holdout/0/NAME"));
    // Both folders load as image sets, as `a3ft train --data DIR/train --holdout DIR/holdout` does.
    assert_eq!(
        a3ft::data::load_folder(&out.join("holdout"), 8, true)
            .unwrap()
            .paths
            .len(),
        expected.len()
    );
    assert_eq!(
        a3ft::data::load_folder(&out.join("train"), 8, true)
            .unwrap()
            .paths
            .len(),
        6 - expected.len()
    );
    // A re-fetch with another split leaves no stale file behind.
    datasets::fetch(&f.set(), &f.seeded_cache(), &out, &opts(8, 0)).unwrap();
    assert!(!out.join("holdout").exists());
    assert_eq!(tree(&out).len(), 7);
}

#[test]
fn checksum_mismatch_names_expected_and_got() {
    let f = Fixture::new();
    let cache = f.seeded_cache();
    // Same package and cached file, pinned to the checksum of other bytes.
    let other = f.root.join("other");
    std::fs::write(&other, b"other bytes").unwrap();
    let mut wrong = f.pkg.clone();
    wrong.integrity = integrity_of(&other, "sha512-").unwrap();
    let e = err(datasets::fetch(
        &set_of(&wrong),
        &cache,
        &f.root.join("out"),
        &opts(8, 0),
    ));
    assert!(e.contains("checksum mismatch for fake@1.0.0"), "{e}");
    assert!(
        e.contains(&format!(
            "expected {}, got {}",
            wrong.integrity, f.pkg.integrity
        )),
        "{e}"
    );
    assert!(e.contains("delete") && !e.contains('\n'), "{e}");
    assert!(!f.root.join("out").exists());
}

#[test]
fn one_line_errors_for_bad_requests() {
    let e = err(datasets::by_name("digits"));
    assert!(
        e.contains("unknown data set \"digits\"") && e.contains("emoji, emoji-icons, pokemon"),
        "{e}"
    );
    for name in datasets::KNOWN {
        assert_eq!(datasets::by_name(name).unwrap().name, *name);
    }

    let f = Fixture::new();
    let cache = f.seeded_cache();
    for size in [0, 1025] {
        let e = err(datasets::fetch(
            &f.set(),
            &cache,
            &f.root.join("out"),
            &opts(size, 0),
        ));
        assert!(e.contains(&format!("--size {size} is out of range")), "{e}");
    }
    let e = err(datasets::fetch(
        &f.set(),
        &cache,
        &f.root.join("out"),
        &opts(8, 5),
    ));
    assert!(
        e.contains("--holdout 5 must be less than the 5 distinct images of fake"),
        "{e}"
    );
    assert!(!f.root.join("out").exists());
}

#[test]
fn npm_missing_or_failing() {
    let f = Fixture::new();
    let empty = NpmCache {
        dir: f.root.join("empty-cache"),
        npm: "a3ft-test-no-such-npm".into(),
    };
    let e = err(datasets::fetch(
        &f.set(),
        &empty,
        &f.root.join("out"),
        &opts(8, 0),
    ));
    assert!(e.contains("npm not found on PATH"), "{e}");
    assert!(
        e.contains(&empty.path_of(&f.pkg).display().to_string()),
        "{e}"
    );

    #[cfg(unix)]
    {
        let failing = fake_npm(&f.root, "failing", "echo 'npm error code E404' >&2; echo 'npm error 404 Not Found - GET https://registry.example/fake' >&2; exit 1");
        let cache = NpmCache {
            dir: f.root.join("c1"),
            npm: failing.into(),
        };
        let e = err(datasets::fetch(
            &f.set(),
            &cache,
            &f.root.join("out"),
            &opts(8, 0),
        ));
        assert!(
            e.contains("`npm pack fake@1.0.0` failed")
                && e.contains("E404: 404 Not Found - GET https://registry.example/fake"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}

/// A fake npm that "downloads" by copying the fixture: the first fetch caches the tarball,
/// the second needs no npm at all.
#[cfg(unix)]
#[test]
fn npm_pack_fills_the_cache_once() {
    let f = Fixture::new();
    let npm = fake_npm(
        &f.root,
        "good",
        &format!(
            "test \"$1\" = pack && test \"$2\" = fake@1.0.0 || exit 9; cp '{}' ./fake-1.0.0.tgz",
            f.tgz.display()
        ),
    );
    let cache = NpmCache {
        dir: f.root.join("c"),
        npm: npm.into(),
    };
    datasets::fetch(&f.set(), &cache, &f.root.join("a"), &opts(8, 1)).unwrap();
    assert!(cache.path_of(&f.pkg).is_file());
    let offline = NpmCache {
        npm: "a3ft-test-no-such-npm".into(),
        ..cache.clone()
    };
    datasets::fetch(&f.set(), &offline, &f.root.join("b"), &opts(8, 1)).unwrap();
    assert_eq!(tree(&f.root.join("a")), tree(&f.root.join("b")));
    // Only the checked tarball is left in the cache (no temporary pack folder).
    assert_eq!(std::fs::read_dir(&cache.dir).unwrap().count(), 1);

    // A package whose bytes are not the pinned ones is never cached.
    let mut wrong = f.pkg.clone();
    wrong.version = "1.0.1".into();
    let npm2 = fake_npm(
        &f.root,
        "wrong",
        &format!("cp '{}' ./fake-1.0.1.tgz", f.tgz.display()),
    );
    let cache2 = NpmCache {
        dir: f.root.join("c2"),
        npm: npm2.into(),
    };
    wrong.integrity = "sha512-AAAA".into();
    let e = err(datasets::fetch(
        &set_of(&wrong),
        &cache2,
        &f.root.join("x"),
        &opts(8, 0),
    ));
    assert!(e.contains("checksum mismatch for fake@1.0.1"), "{e}");
    assert_eq!(std::fs::read_dir(&cache2.dir).unwrap().count(), 0);
}

/// A shell script `npm-{name}` in `dir` running `body`. A child `sh` writes it: had this process
/// written it, a child that another test's thread forks meanwhile would inherit the file open for
/// writing, and running the script could then fail with "text file busy" (every test module
/// shares this process, and most of them start processes).
#[cfg(unix)]
fn fake_npm(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("npm-{name}"));
    let script = format!("#!/bin/sh\n{body}");
    let status = std::process::Command::new("sh")
        .args(["-c", "printf '%s\\n' \"$1\" > \"$0\" && chmod 755 \"$0\""])
        .arg(&p)
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success(), "cannot write {}", p.display());
    p
}

#[test]
fn never_replaces_a_folder_with_other_files() {
    let f = Fixture::new();
    let cache = f.seeded_cache();
    let out = f.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("mine.txt"), b"keep").unwrap();
    let e = err(datasets::fetch(&f.set(), &cache, &out, &opts(8, 0)));
    assert!(e.contains("holds no manifest.json"), "{e}");

    // An earlier fetch plus a file the user added: refused, and nothing touched.
    let out2 = f.root.join("out2");
    datasets::fetch(&f.set(), &cache, &out2, &opts(8, 0)).unwrap();
    std::fs::write(out2.join("train").join("extra.png"), b"x").unwrap();
    let before = tree(&out2);
    let e = err(datasets::fetch(&f.set(), &cache, &out2, &opts(16, 0)));
    assert!(
        e.contains("holds train/extra.png, which the earlier fetch did not write"),
        "{e}"
    );
    assert_eq!(before, tree(&out2));

    // An earlier fetch of another set is not ours to replace.
    let out3 = f.root.join("out3");
    datasets::fetch(&f.set(), &cache, &out3, &opts(8, 0)).unwrap();
    let mut other = f.set();
    other.name = "other".into();
    let e = err(datasets::fetch(&other, &cache, &out3, &opts(8, 0)));
    assert!(e.contains("from a fetch of \"fake\", not \"other\""), "{e}");

    // A file is not a folder.
    std::fs::write(f.root.join("file"), b"x").unwrap();
    assert!(err(datasets::fetch(
        &f.set(),
        &cache,
        &f.root.join("file"),
        &opts(8, 0)
    ))
    .contains("is not a folder"));
    // An empty folder is fine.
    std::fs::create_dir_all(f.root.join("empty")).unwrap();
    datasets::fetch(&f.set(), &cache, &f.root.join("empty"), &opts(8, 0)).unwrap();
    // A download cache inside --out would be replaced with it: refused before anything is fetched.
    let inside = NpmCache {
        dir: f.root.join("new-out").join("cache"),
        npm: cache.npm.clone(),
    };
    assert!(err(datasets::fetch(
        &f.set(),
        &inside,
        &f.root.join("new-out"),
        &opts(8, 0)
    ))
    .contains("lies inside --out"));
    assert!(!f.root.join("new-out").exists());
}

/// Hand-written tar headers: names the `tar` builder itself refuses to write.
fn raw_tgz(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    b.append(&h, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn archive_paths_and_sizes_are_checked() {
    use a3ft::data::tarball::{read_files, Limits};
    let dir = tempfile::tempdir().unwrap();
    for name in [&b"package/../../evil.png"[..], b"/etc/evil.png"] {
        let p = dir.path().join("bad.tgz");
        std::fs::write(&p, raw_tgz(name, b"x")).unwrap();
        let e = err(read_files(&p, &Limits::default(), |_| true));
        assert!(e.contains("refusing entry"), "{e}");
    }
    let p = dir.path().join("big.tgz");
    std::fs::write(&p, raw_tgz(b"package/a.png", &[0u8; 100])).unwrap();
    let small = Limits {
        max_file: 10,
        ..Limits::default()
    };
    assert!(err(read_files(&p, &small, |_| true)).contains("over the 10 byte limit"));
    let tiny = Limits {
        max_unpacked: 50,
        ..Limits::default()
    };
    assert!(read_files(&p, &tiny, |_| false).is_err());
    assert_eq!(
        read_files(&p, &Limits::default(), |_| true).unwrap()[0]
            .bytes
            .len(),
        100
    );
    std::fs::write(&p, b"not gzip").unwrap();
    assert!(read_files(&p, &Limits::default(), |_| true).is_err());
}

fn iconify(pkg: &Package, prefix: &str) -> Source {
    Source {
        package: pkg.clone(),
        files: Files::Iconify {
            file: "package/icons.json".into(),
        },
        prefix: prefix.into(),
        licence: "test".into(),
    }
}

#[test]
fn iconify_icons_become_images_and_copies_across_sets_stay_together() {
    let f = Fixture::new();
    let out = f.root.join("out");
    // The same icon set under two prefixes: each icon of one is a byte copy of the other's.
    let set = DataSet {
        name: "icons".into(),
        description: "test".into(),
        sources: vec![iconify(&f.pkg, "a-"), iconify(&f.pkg, "b-")],
        notice: "n".into(),
    };
    let m = datasets::fetch(&set, &f.seeded_cache(), &out, &opts(8, 1)).unwrap();
    // square and dot from each set: hidden, too wide and aliased icons are left out.
    assert_eq!(
        (
            m.counts.found,
            m.counts.distinct,
            m.counts.train,
            m.counts.holdout
        ),
        (4, 2, 2, 2)
    );
    assert_eq!(
        m.packages
            .iter()
            .map(|p| (p.folder.as_str(), p.files))
            .collect::<Vec<_>>(),
        [("package/icons.json", 2), ("package/icons.json", 2)]
    );
    let kept: Vec<&str> = m.duplicates.iter().map(|d| d.kept.as_str()).collect();
    assert_eq!(kept, ["a-dot", "a-square"]);
    // A copy always lies on its original's side of the split.
    for d in &m.duplicates {
        let side = |name: &str| {
            m.files
                .iter()
                .find(|r| r.path.ends_with(&format!("/{name}.png")))
                .unwrap()
                .path
                .split('/')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(side(&d.kept), side(&d.dropped[0]));
    }
    assert!(m
        .files
        .iter()
        .any(|r| r.source == "fake@1.0.0:package/icons.json#dot"));
    assert!(
        m.rendering.contains("Iconify JSON") && m.rendering.contains("resvg"),
        "{}",
        m.rendering
    );
    let path = |name: &str| {
        out.join(
            m.files
                .iter()
                .find(|r| r.path.ends_with(&format!("/{name}.png")))
                .unwrap()
                .path
                .clone(),
        )
    };
    // Each icon is drawn in its own box: the square fills the image, the dot sits in the middle.
    assert!(rgb(&path("a-square")).pixels().all(|p| p.0 == [0, 0, 255]));
    let dot = rgb(&path("b-dot"));
    assert_eq!(
        (dot.get_pixel(4, 4).0, dot.get_pixel(0, 0).0),
        ([255, 0, 0], [255, 255, 255])
    );
    // The same bytes on a second fetch.
    let again = f.root.join("again");
    datasets::fetch(&set, &f.seeded_cache(), &again, &opts(8, 1)).unwrap();
    assert_eq!(tree(&out), tree(&again));
}
