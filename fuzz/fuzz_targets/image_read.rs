//! The disk image reader (`ringtftp::image`) on arbitrary images: the partition table (MBR,
//! its extended partitions, GPT, or none), the FAT boot sector, directories with long names,
//! and every file's cluster chain. Whatever the bytes:
//! - nothing panics or hangs (a chain or a directory that loops is an error);
//! - every file found lies wholly inside its partition, and inside the image: its extents add
//!   up to its length and none reaches past the partition's end;
//! - reading a file through its extents gives exactly its length.
#![no_main]

use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringtftp::image::{partitions, read_extents, Fat, Partition};

/// One scratch file per fuzzing process, rewritten for each input (the reader takes a `File`).
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() { dir.to_path_buf() } else { std::env::temp_dir() };
        let path = dir.join(format!("ringtftp-fuzz-image-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("a scratch file");
        // Unlinked at once: the descriptor keeps it while the process runs.
        let _ = std::fs::remove_file(&path);
        file
    })
}

/// Walks `dir` of `fat` a few levels down, checking every file found.
fn walk(fat: &Fat, file: &File, part: &Partition, image_len: u64, dir: &str, depth: u32) {
    let Ok(entries) = fat.list(file, dir) else { return };
    for entry in entries.iter().take(64) {
        let path = if dir.is_empty() {
            entry.name.clone()
        } else {
            format!("{dir}/{}", entry.name)
        };
        let Ok(found) = fat.find(file, &path) else { continue };
        if found.is_dir {
            if depth < 4 {
                walk(fat, file, part, image_len, &path, depth + 1);
            }
            continue;
        }
        assert_eq!(found.extents.iter().map(|e| e.len).sum::<u64>(), found.len, "{path}");
        for e in &found.extents {
            assert!(e.offset >= part.offset, "{path}: {e:?} before {part:?}");
            assert!(e.offset + e.len <= part.offset + part.len, "{path}: {e:?} past {part:?}");
            assert!(e.offset + e.len <= image_len, "{path}: {e:?} past the image");
        }
        let mut buf = vec![0; found.len.min(1 << 16) as usize];
        let read = read_extents(file, &found.extents, 0, &mut buf).expect("a read within the image");
        assert_eq!(read, buf.len(), "{path}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut file = scratch();
    file.set_len(0).expect("truncate");
    std::os::unix::fs::FileExt::write_all_at(file, data, 0).expect("write");
    let _ = file.flush();
    let image_len = data.len() as u64;
    let Ok(parts) = partitions(file, image_len) else { return };
    for part in parts.iter().take(8) {
        assert!(part.offset + part.len <= image_len, "{part:?} past the image");
        if let Ok(fat) = Fat::open(file, part) {
            walk(&fat, file, part, image_len, "", 0);
        }
    }
});
