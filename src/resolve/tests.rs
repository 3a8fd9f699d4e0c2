//! The resolvers fed real directories: confinement, symlinks, modes, in-memory and generated sources.

use super::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::atomic::AtomicUsize;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ringtftp-resolve-{}-{test}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn mkdir(&self, name: &str) {
        std::fs::create_dir_all(self.0.join(name)).unwrap();
    }

    fn symlink(&self, name: &str, target: impl AsRef<Path>) {
        symlink(target, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn peer() -> SocketAddr {
    "192.0.2.1:1234".parse().unwrap()
}

/// The same tree served through openat2 and through the walker.
fn resolvers(dir: &TempDir) -> [DirectoryResolver; 2] {
    let kernel = DirectoryResolver::new(&dir.0).unwrap();
    let walker = DirectoryResolver::new(&dir.0).unwrap();
    walker.no_openat2.store(true, Ordering::Relaxed);
    [kernel, walker]
}

fn contents(source: &Source) -> Vec<u8> {
    let mut buf = vec![0; source.len() as usize + 16];
    let n = source.read_full_at(&mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

#[track_caller]
fn assert_serves(resolver: &DirectoryResolver, name: &str, expected: &[u8]) {
    let source = resolver
        .resolve(name, peer())
        .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    assert!(matches!(source, Source::File(_)), "{name:?}");
    assert_eq!(source.len(), expected.len() as u64, "{name:?}");
    assert_eq!(contents(&source), expected, "{name:?}");
}

#[track_caller]
fn assert_refused(resolver: &DirectoryResolver, name: &str, code: ErrorCode) {
    match resolver.resolve(name, peer()) {
        Ok(source) => panic!("{name:?} served {source:?}"),
        Err(e) => assert_eq!(e.code(), code, "{name:?}: {e:?}"),
    }
}

#[test]
fn serves_a_regular_file() {
    let dir = TempDir::new("regular");
    dir.write("pxelinux.0", b"hello, boot storm");
    for resolver in resolvers(&dir) {
        assert_serves(&resolver, "pxelinux.0", b"hello, boot storm");
        let Ok(Source::File(file)) = resolver.resolve("pxelinux.0", peer()) else {
            panic!("not a file");
        };
        assert_eq!(file.len(), 17);
        assert_eq!(file.id(), FileId::of(file.file()).unwrap());
        // The descriptor is left blocking, for io_uring.
        // SAFETY: F_GETFL on a live descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
    assert_eq!(resolvers(&dir)[0].root(), dir.0.as_path());
}

#[test]
fn uses_openat2_where_the_kernel_has_it() {
    let dir = TempDir::new("openat2");
    dir.write("f", b"x");
    let resolver = DirectoryResolver::new(&dir.0).unwrap();
    resolver.resolve("f", peer()).unwrap();
    let name = CString::new("f").unwrap();
    match openat2_beneath(resolver.current().as_fd(), &name, OPEN_FLAGS) {
        Ok(_) => assert!(!resolver.no_openat2.load(Ordering::Relaxed)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            assert!(resolver.no_openat2.load(Ordering::Relaxed))
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn serves_empty_files() {
    let dir = TempDir::new("empty");
    dir.write("empty", b"");
    for resolver in resolvers(&dir) {
        let source = resolver.resolve("empty", peer()).unwrap();
        assert!(source.is_empty());
        assert_eq!(source.read_at(&mut [0; 8], 0).unwrap(), 0);
    }
}

#[test]
fn leading_slashes_are_relative_to_the_root() {
    let dir = TempDir::new("leading");
    dir.write("pxelinux.0", b"boot");
    dir.write("efi/grubx64.efi", b"grub");
    for resolver in resolvers(&dir) {
        assert_serves(&resolver, "/pxelinux.0", b"boot");
        assert_serves(&resolver, "///pxelinux.0", b"boot");
        assert_serves(&resolver, "/efi/grubx64.efi", b"grub");
    }
}

#[test]
fn serves_nested_files() {
    let dir = TempDir::new("nested");
    dir.write("a/b/c", b"deep");
    for resolver in resolvers(&dir) {
        assert_serves(&resolver, "a/b/c", b"deep");
        assert_serves(&resolver, "a//b/./c", b"deep");
        assert_serves(&resolver, "a/b/../b/c", b"deep");
        assert_refused(&resolver, "a/b/c/", ErrorCode::FileNotFound);
        assert_refused(&resolver, "a/b/c/.", ErrorCode::FileNotFound);
        assert_refused(&resolver, "a/b/c/d", ErrorCode::FileNotFound);
    }
}

#[test]
fn missing_files_are_not_found() {
    let dir = TempDir::new("missing");
    dir.mkdir("a");
    for resolver in resolvers(&dir) {
        for name in ["nope", "a/nope", "nope/x", "/nope"] {
            assert!(matches!(
                resolver.resolve(name, peer()),
                Err(ResolveError::NotFound)
            ));
            assert_refused(&resolver, name, ErrorCode::FileNotFound);
        }
    }
}

#[test]
fn dotdot_cannot_leave_the_root() {
    let outer = TempDir::new("dotdot");
    std::fs::write(outer.0.join("secret"), b"secret").unwrap();
    std::fs::create_dir(outer.0.join("root")).unwrap();
    std::fs::write(outer.0.join("root/inside"), b"inside").unwrap();
    std::fs::create_dir(outer.0.join("root/a")).unwrap();
    let kernel = DirectoryResolver::new(outer.0.join("root")).unwrap();
    let walker = DirectoryResolver::new(outer.0.join("root")).unwrap();
    walker.no_openat2.store(true, Ordering::Relaxed);
    for resolver in [kernel, walker] {
        for name in [
            "../secret",
            "a/../../secret",
            "/../secret",
            "..\\secret",
            "a/../a/../../root/inside",
            "..",
            "../root/inside",
        ] {
            assert_refused(&resolver, name, ErrorCode::AccessViolation);
        }
        assert_serves(&resolver, "a/../inside", b"inside");
    }
}

#[test]
fn symlinks_cannot_leave_the_root() {
    let outer = TempDir::new("escape");
    std::fs::write(outer.0.join("secret"), b"secret").unwrap();
    std::fs::create_dir(outer.0.join("root")).unwrap();
    let dir = TempDir(outer.0.join("root"));
    dir.symlink("passwd", "/etc/passwd");
    dir.symlink("etc", "/etc");
    dir.symlink("up", "..");
    dir.symlink("secret", "../secret");
    dir.symlink("absolute-inside", dir.0.join("secret"));
    dir.mkdir("sub");
    dir.symlink("sub/upup", "../..");
    for resolver in resolvers(&dir) {
        for name in [
            "passwd",
            "etc/passwd",
            "up/secret",
            "secret",
            "absolute-inside",
            "sub/upup/secret",
        ] {
            assert_refused(&resolver, name, ErrorCode::AccessViolation);
        }
    }
}

#[test]
fn symlinks_inside_the_root_work() {
    let dir = TempDir::new("inside");
    dir.write("images/v2/vmlinuz", b"kernel v2");
    dir.symlink("vmlinuz", "images/v2/vmlinuz");
    dir.symlink("current", "images/v2");
    dir.mkdir("hosts/rack1");
    dir.symlink("hosts/rack1/vmlinuz", "../../vmlinuz");
    dir.symlink("chain1", "chain2");
    dir.symlink("chain2", "./current/vmlinuz");
    for resolver in resolvers(&dir) {
        assert_serves(&resolver, "vmlinuz", b"kernel v2");
        assert_serves(&resolver, "current/vmlinuz", b"kernel v2");
        assert_serves(&resolver, "hosts/rack1/vmlinuz", b"kernel v2");
        assert_serves(&resolver, "chain1", b"kernel v2");
        assert_refused(&resolver, "current", ErrorCode::AccessViolation);
    }
}

#[test]
fn symlink_loops_are_refused() {
    let dir = TempDir::new("loop");
    dir.symlink("loop", "loop");
    dir.symlink("ping", "pong");
    dir.symlink("pong", "ping");
    for resolver in resolvers(&dir) {
        assert_refused(&resolver, "loop", ErrorCode::AccessViolation);
        assert_refused(&resolver, "ping", ErrorCode::AccessViolation);
    }
}

#[test]
fn directories_are_not_files_and_paths_stay_secret() {
    let dir = TempDir::new("directory");
    dir.mkdir("pxelinux.cfg");
    dir.write("pxelinux.cfg/default", b"menu");
    for resolver in resolvers(&dir) {
        for name in [
            "pxelinux.cfg",
            "pxelinux.cfg/",
            "/",
            "",
            "\\",
            "pxelinux.cfg/..",
        ] {
            let e = resolver.resolve(name, peer()).unwrap_err();
            assert!(matches!(e, ResolveError::NotAFile), "{name:?}: {e:?}");
            assert_eq!(e.code(), ErrorCode::AccessViolation);
            assert_eq!(e.message(), "Not a regular file");
            for text in [e.message().to_string(), e.to_string()] {
                for part in dir.0.iter() {
                    let part = part.to_string_lossy();
                    if part != "/" {
                        assert!(!text.contains(&*part), "{text:?} reveals {part:?}");
                    }
                }
            }
        }
    }
}

/// A thread blocked opening the FIFO `path` for writing, which returns only once some process
/// opens it for reading (fifo(7)): a witness that the resolver never did.
struct Writer(std::sync::mpsc::Receiver<()>, std::thread::JoinHandle<()>);

impl Writer {
    fn wait_at(path: &Path) -> Writer {
        let path = path.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _writer = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let _ = tx.send(());
        });
        Writer(rx, thread)
    }

    /// Whether a reader opened the FIFO within `ms` milliseconds.
    fn saw_reader(&self, ms: u64) -> bool {
        self.0
            .recv_timeout(std::time::Duration::from_millis(ms))
            .is_ok()
    }

    /// Opens the FIFO for reading ourselves, so the writer's open returns.
    fn release(self, path: &Path) {
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap();
        assert!(self.saw_reader(10_000), "the writer saw our reader");
        self.1.join().unwrap();
    }
}

#[test]
fn fifos_are_refused_without_being_opened() {
    let dir = TempDir::new("fifo");
    let path = dir.0.join("fifo");
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c_path` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let [kernel, walker] = resolvers(&dir);
    let no_proc = DirectoryResolver::new(&dir.0).unwrap();
    no_proc.no_proc.store(true, Ordering::Relaxed);
    for resolver in [kernel, walker, no_proc] {
        let writer = Writer::wait_at(&path);
        let e = resolver.resolve("fifo", peer()).unwrap_err();
        assert!(matches!(e, ResolveError::NotAFile), "{e:?}");
        assert_eq!(e.code(), ErrorCode::AccessViolation);
        assert!(!writer.saw_reader(100), "the resolver opened the FIFO");
        writer.release(&path);
    }
}

#[test]
fn device_nodes_are_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // mknod of a device needs CAP_MKNOD
    }
    let dir = TempDir::new("device");
    let path = CString::new(dir.0.join("null").as_os_str().as_bytes()).unwrap();
    // SAFETY: `path` is NUL-terminated. 1:3 is /dev/null, harmless even if it were opened.
    let made = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) };
    if made != 0 {
        return; // a container without CAP_MKNOD, or a nodev mount
    }
    for resolver in resolvers(&dir) {
        let e = resolver.resolve("null", peer()).unwrap_err();
        assert!(matches!(e, ResolveError::NotAFile), "{e:?}");
    }
}

#[test]
fn files_are_served_without_proc_too() {
    let dir = TempDir::new("no-proc");
    dir.write("a/kernel", b"vmlinuz");
    dir.symlink("link", "a/kernel");
    let [kernel, walker] = resolvers(&dir);
    for resolver in [kernel, walker] {
        resolver.no_proc.store(true, Ordering::Relaxed);
        assert_serves(&resolver, "a/kernel", b"vmlinuz");
        assert_serves(&resolver, "link", b"vmlinuz");
        let Ok(Source::File(file)) = resolver.resolve("link", peer()) else {
            panic!("not a file");
        };
        // SAFETY: F_GETFL on a live descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "left blocking for io_uring");
        assert_refused(&resolver, "a", ErrorCode::AccessViolation);
        assert_refused(&resolver, "../x", ErrorCode::AccessViolation);
    }
}

#[test]
fn unreadable_files_are_access_violations() {
    let dir = TempDir::new("unreadable");
    dir.write("locked", b"x");
    std::fs::set_permissions(dir.0.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return; // root reads it anyway (CAP_DAC_OVERRIDE)
    }
    for resolver in resolvers(&dir) {
        assert_refused(&resolver, "locked", ErrorCode::AccessViolation);
    }
}

#[test]
fn backslashes_are_separators() {
    let dir = TempDir::new("backslash");
    dir.write("boot/x64/wdsnbp.com", b"wds");
    for resolver in resolvers(&dir) {
        assert_serves(&resolver, "boot\\x64\\wdsnbp.com", b"wds");
        assert_serves(&resolver, "\\boot\\x64\\wdsnbp.com", b"wds");
        assert_serves(&resolver, "boot/x64\\wdsnbp.com", b"wds");
    }
}

#[test]
fn normalises_names() {
    let name = |s| normalise(s).map(|c| c.into_bytes());
    assert_eq!(name("a").unwrap(), b"a");
    assert_eq!(name("//a/b").unwrap(), b"a/b");
    assert_eq!(name("\\a\\b").unwrap(), b"a/b");
    assert_eq!(name("a/").unwrap(), b"a/");
    assert!(matches!(name(""), Err(ResolveError::NotAFile)));
    assert!(matches!(name("/\\/"), Err(ResolveError::NotAFile)));
    assert!(matches!(name("a\0b"), Err(ResolveError::NotFound)));
}

#[test]
fn walker_answers_like_the_kernel() {
    let outer = TempDir::new("walker");
    std::fs::write(outer.0.join("secret"), b"secret").unwrap();
    std::fs::create_dir(outer.0.join("root")).unwrap();
    let dir = TempDir(outer.0.join("root"));
    dir.write("a/b/file", b"file");
    dir.symlink("abs", "/etc/passwd");
    dir.symlink("up", "../secret");
    dir.symlink("a/link", "b/file");
    dir.symlink("loop", "loop");
    let root = DirectoryResolver::new(&dir.0).unwrap().current();
    let walk = |name: &str| {
        let name = CString::new(name).unwrap();
        walk_beneath(root.as_fd(), &name, OPEN_FLAGS)
            .map(File::from)
            .map_err(|e| e.raw_os_error())
    };
    let mut buf = [0; 8];
    let file = walk("a/link").unwrap();
    assert_eq!(file.read_at(&mut buf, 0).unwrap(), 4);
    assert_eq!(&buf[..4], b"file");
    assert!(walk("a/b/../b/file").is_ok());
    assert_eq!(walk("../secret").unwrap_err(), Some(libc::EXDEV));
    assert_eq!(walk("a/../../secret").unwrap_err(), Some(libc::EXDEV));
    assert_eq!(walk("abs").unwrap_err(), Some(libc::EXDEV));
    assert_eq!(walk("up").unwrap_err(), Some(libc::EXDEV));
    assert_eq!(walk("loop").unwrap_err(), Some(libc::ELOOP));
    assert_eq!(walk("nope").unwrap_err(), Some(libc::ENOENT));
    assert_eq!(walk("a/b/file/x").unwrap_err(), Some(libc::ENOTDIR));
    assert_eq!(walk("a/b").unwrap_err(), Some(libc::EISDIR));
    assert_eq!(walk(".").unwrap_err(), Some(libc::EISDIR));
    // The kernel agrees wherever it has openat2.
    for name in [
        "../secret",
        "abs",
        "up",
        "loop",
        "nope",
        "a/b/file/x",
        "a/link",
    ] {
        let c = CString::new(name).unwrap();
        match openat2_beneath(root.as_fd(), &c, OPEN_FLAGS) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return,
            kernel => assert_eq!(
                kernel.map(drop).map_err(|e| e.raw_os_error()),
                walk(name).map(drop),
                "{name:?}"
            ),
        }
    }
}

#[test]
fn file_id_changes_when_the_file_is_replaced() {
    let dir = TempDir::new("replace");
    dir.write("initrd", b"old initrd");
    let resolver = DirectoryResolver::new(&dir.0).unwrap();
    let id = |resolver: &DirectoryResolver| match resolver.resolve("initrd", peer()) {
        Ok(Source::File(file)) => file.id(),
        other => panic!("{other:?}"),
    };
    let before = id(&resolver);
    assert_eq!(id(&resolver), before, "same file, same id");
    let held = resolver.resolve("initrd", peer()).unwrap();
    dir.write("initrd.new", b"new initrd!");
    std::fs::rename(dir.0.join("initrd.new"), dir.0.join("initrd")).unwrap();
    let after = id(&resolver);
    assert_ne!(after, before);
    assert_ne!(after.ino, before.ino);
    assert_eq!(after.size, 11);
    // A transfer that opened the old file keeps reading the old bytes.
    assert_eq!(contents(&held), b"old initrd");
}

#[test]
fn file_id_changes_when_the_file_is_rewritten_with_its_times_put_back() {
    let dir = TempDir::new("rewrite");
    dir.write("initrd", b"old initrd");
    let resolver = DirectoryResolver::new(&dir.0).unwrap();
    let id = || match resolver.resolve("initrd", peer()) {
        Ok(Source::File(file)) => file.id(),
        other => panic!("{other:?}"),
    };
    let before = id();
    // What `cp -p` or `rsync --inplace -t` do: same inode, same size, mtime set back.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("initrd"))
        .unwrap()
        .write_all_at(b"new", 0)
        .unwrap();
    let path = CString::new(dir.0.join("initrd").as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: before.mtime_sec,
            tv_nsec: before.mtime_nsec,
        },
        libc::timespec {
            tv_sec: before.mtime_sec,
            tv_nsec: before.mtime_nsec,
        },
    ];
    // SAFETY: `path` is NUL-terminated and `times` two valid timespecs.
    let set = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(set, 0);
    let after = id();
    assert_eq!(
        (after.ino, after.size, after.mtime_sec, after.mtime_nsec),
        (before.ino, before.size, before.mtime_sec, before.mtime_nsec),
        "only the change time tells"
    );
    assert_ne!(after, before);
    assert_ne!(
        (after.ctime_sec, after.ctime_nsec),
        (before.ctime_sec, before.ctime_nsec)
    );
}

#[test]
fn new_requires_a_directory() {
    let dir = TempDir::new("new");
    dir.write("file", b"x");
    let e = DirectoryResolver::new(dir.0.join("missing")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let e = DirectoryResolver::new(dir.0.join("file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
}

#[test]
fn memory_sources_read_at_offsets() {
    let source = Source::memory(b"0123456789".to_vec());
    assert_eq!(source.len(), 10);
    assert!(!source.is_empty());
    let mut buf = [0; 4];
    assert_eq!(source.read_at(&mut buf, 0).unwrap(), 4);
    assert_eq!(&buf, b"0123");
    assert_eq!(source.read_at(&mut buf, 8).unwrap(), 2);
    assert_eq!(&buf[..2], b"89");
    assert_eq!(source.read_at(&mut buf, 10).unwrap(), 0);
    assert_eq!(source.read_at(&mut buf, 11).unwrap(), 0);
    assert_eq!(source.read_at(&mut buf, u64::MAX).unwrap(), 0);
    assert!(Source::memory(Vec::new()).is_empty());
    assert_eq!(format!("{source:?}"), "Memory { len: 10 }");
}

#[test]
fn custom_sources_and_read_full_at() {
    /// Returns at most 3 bytes per read, like a short-reading device.
    #[derive(Debug)]
    struct Dribble(Vec<u8>);
    impl ReadAt for Dribble {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = buf.len().min(3);
            Ok(copy_at(&self.0, &mut buf[..n], offset))
        }
    }
    let source = Source::custom(Dribble(b"abcdefghij".to_vec()));
    assert_eq!(source.len(), 10);
    let mut buf = [0; 8];
    assert_eq!(source.read_at(&mut buf, 0).unwrap(), 3);
    assert_eq!(source.read_full_at(&mut buf, 0).unwrap(), 8);
    assert_eq!(&buf, b"abcdefgh");
    assert_eq!(source.read_full_at(&mut buf, 8).unwrap(), 2);
    assert_eq!(&buf[..2], b"ij");
}

#[test]
fn source_file_takes_only_regular_files() {
    let dir = TempDir::new("source-file");
    dir.write("f", b"abc");
    let source = Source::file(File::open(dir.0.join("f")).unwrap()).unwrap();
    assert_eq!(source.len(), 3);
    assert_eq!(contents(&source), b"abc");
    let e = Source::file(File::open(&dir.0).unwrap()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn io_errors_map_to_tftp_errors() {
    let code = |errno| ResolveError::from(io::Error::from_raw_os_error(errno)).code();
    for errno in [libc::ENOENT, libc::ENOTDIR, libc::ENAMETOOLONG] {
        assert_eq!(code(errno), ErrorCode::FileNotFound);
    }
    for errno in [
        libc::EACCES,
        libc::EPERM,
        libc::ELOOP,
        libc::EXDEV,
        libc::EISDIR,
    ] {
        assert_eq!(code(errno), ErrorCode::AccessViolation);
    }
    assert_eq!(code(libc::EMFILE), ErrorCode::Undefined);
    let e = ResolveError::from(io::Error::from_raw_os_error(libc::EMFILE));
    assert_eq!(e.message(), "I/O error");
    assert!(std::error::Error::source(&e).is_some());
    let e = ResolveError::from(io::Error::new(io::ErrorKind::NotFound, "/srv/tftp/x"));
    assert!(matches!(e, ResolveError::NotFound));
    let e = ResolveError::from(io::Error::other("/srv/tftp/x is cursed"));
    assert_eq!(e.message(), "I/O error");
    let e = ResolveError::Other("Go away".into());
    assert_eq!((e.code(), e.message()), (ErrorCode::Undefined, "Go away"));
}

#[test]
fn closures_and_arcs_are_resolvers() {
    fn serve(resolver: impl Resolver) -> Result<Source, ResolveError> {
        resolver.resolve("boot.ipxe", peer())
    }
    let script = |name: &str, peer: SocketAddr| match name {
        "boot.ipxe" => Ok(Source::memory(
            format!("#!ipxe\n# {}\n", peer.ip()).into_bytes(),
        )),
        _ => Err(ResolveError::NotFound),
    };
    let source = serve(script).unwrap();
    assert_eq!(contents(&source), b"#!ipxe\n# 192.0.2.1\n");
    let shared: Arc<dyn Resolver> = Arc::new(script);
    assert!(serve(shared.clone()).is_ok());
    assert!(matches!(
        shared.resolve("other", peer()),
        Err(ResolveError::NotFound)
    ));
    let dir = TempDir::new("arc");
    assert!(serve(Arc::new(DirectoryResolver::new(&dir.0).unwrap())).is_err());
}

/// A tree with a file for one client's MAC, one for two clients' addresses, and the shared one,
/// in a directory with a file outside the root.
fn client_tree() -> (TempDir, TempDir) {
    let outer = TempDir::new("clients");
    let dir = TempDir(outer.0.join("root"));
    dir.write("boot.cfg", b"shared");
    dir.write("192.0.2.7/boot.cfg", b"by address .7");
    dir.write("192.0.2.8/boot.cfg", b"by address .8");
    dir.write("2001:db8::7/boot.cfg", b"by IPv6 address");
    dir.write("01-52-54-00-12-34-56/boot.cfg", b"by MAC");
    dir.write("192.0.2.7/only-here", b"own file");
    dir.mkdir("192.0.2.9/boot.cfg");
    dir.symlink("192.0.2.8/kernel", "../kernel");
    dir.write("kernel", b"the kernel");
    outer.write("outside-clients", b"secret");
    (dir, outer)
}

fn serve(resolver: &DirectoryResolver, name: &str, peer: &str, mac: Option<[u8; 6]>) -> Vec<u8> {
    let peer = SocketAddr::new(peer.parse().unwrap(), 1234);
    match resolver.resolve_with(name, peer, |_| mac) {
        Ok(source) => contents(&source),
        Err(e) => panic!("{name:?} from {peer}: {e:?}"),
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[test]
fn client_dirs_by_mac_then_address_then_shared() {
    let (dir, _outer) = client_tree();
    for resolver in resolvers(&dir) {
        let r = resolver.with_client_dirs(true);
        assert_eq!(serve(&r, "boot.cfg", "192.0.2.7", Some(MAC)), b"by MAC");
        assert_eq!(serve(&r, "boot.cfg", "192.0.2.7", None), b"by address .7");
        assert_eq!(serve(&r, "/boot.cfg", "192.0.2.8", None), b"by address .8");
        assert_eq!(
            serve(&r, "boot.cfg", "::ffff:192.0.2.8", None),
            b"by address .8"
        );
        assert_eq!(
            serve(&r, "boot.cfg", "2001:db8::7", None),
            b"by IPv6 address"
        );
        assert_eq!(serve(&r, "boot.cfg", "192.0.2.99", None), b"shared");
        assert_eq!(serve(&r, "boot.cfg", "192.0.2.99", Some([2; 6])), b"shared");
        // A file only in the address dir, and a shared one behind the MAC dir.
        assert_eq!(serve(&r, "only-here", "192.0.2.7", Some(MAC)), b"own file");
        assert_eq!(serve(&r, "kernel", "192.0.2.7", Some(MAC)), b"the kernel");
        // A link out of a client dir that stays beneath the root.
        assert_eq!(serve(&r, "kernel", "192.0.2.8", None), b"the kernel");
    }
}

#[test]
fn client_dirs_stay_confined_and_do_not_hide_errors() {
    let (dir, _outer) = client_tree();
    for resolver in resolvers(&dir) {
        let r = resolver.with_client_dirs(true);
        let peer = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 1234);
        for name in [
            "../outside-clients",
            "../../outside-clients",
            "/../outside-clients",
        ] {
            for ip in ["192.0.2.7", "192.0.2.99"] {
                let e = r.resolve_with(name, peer(ip), |_| Some(MAC)).unwrap_err();
                assert_eq!(
                    e.code(),
                    ErrorCode::AccessViolation,
                    "{name:?} from {ip}: {e:?}"
                );
                assert!(!e.message().contains("outside"), "{e}");
            }
        }
        // The client's own entry is a directory: refused, not replaced by the shared file.
        let e = r
            .resolve_with("boot.cfg", peer("192.0.2.9"), |_| None)
            .unwrap_err();
        assert!(matches!(e, ResolveError::NotAFile), "{e:?}");
        let e = r
            .resolve_with("nothing", peer("192.0.2.7"), |_| Some(MAC))
            .unwrap_err();
        assert!(matches!(e, ResolveError::NotFound), "{e:?}");
    }
    // Off by default: every client gets the shared file, and no MAC is looked up.
    let plain = DirectoryResolver::new(&dir.0).unwrap();
    let looked_up = |_: IpAddr| -> Option<[u8; 6]> { panic!("MAC looked up") };
    let source = plain
        .resolve_with("boot.cfg", "192.0.2.7:9".parse().unwrap(), looked_up)
        .unwrap();
    assert_eq!(contents(&source), b"shared");
}

#[test]
fn remapped_names_are_confined_and_meet_client_dirs() {
    let (dir, _outer) = client_tree();
    let rules = Remap::parse(
        "rg \\\\ /\n\
         r ^escape$ ../outside-clients\n\
         r ^mine$ \\i/only-here\n\
         a ^forbidden Not\\ here\n",
    )
    .unwrap();
    for resolver in resolvers(&dir) {
        let r = resolver.with_remap(rules.clone()).with_client_dirs(true);
        assert_eq!(serve(&r, "\\boot.cfg", "192.0.2.8", None), b"by address .8");
        assert_eq!(serve(&r, "mine", "192.0.2.7", None), b"own file");
        let peer = "192.0.2.99:9".parse().unwrap();
        let e = r.resolve_with("escape", peer, |_| None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessViolation, "{e:?}");
        let e = r.resolve_with("forbidden", peer, |_| None).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (ErrorCode::AccessViolation, "Not here")
        );
    }
}

#[test]
fn a_file_renamed_over_is_unchanged_but_one_rewritten_in_place_is_not() {
    let dir = TempDir::new("unchanged");
    dir.write("initrd", b"old initrd");
    let resolver = DirectoryResolver::new(&dir.0).unwrap();
    let Ok(Source::File(held)) = resolver.resolve("initrd", peer()) else {
        panic!("not a file")
    };
    assert!(held.id().unchanged_in(held.file()).unwrap());
    // A new version renamed over the name unlinks the old inode (moving its change time).
    std::thread::sleep(std::time::Duration::from_millis(20));
    dir.write("initrd.new", b"new initrd");
    std::fs::rename(dir.0.join("initrd.new"), dir.0.join("initrd")).unwrap();
    assert_ne!(
        FileId::of(held.file()).unwrap(),
        held.id(),
        "the change time moved"
    );
    assert!(held.id().unchanged_in(held.file()).unwrap(), "the snapshot");
    // The new one rewritten in place with its mtime put back: changed.
    let Ok(Source::File(file)) = resolver.resolve("initrd", peer()) else {
        panic!("not a file")
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("initrd"))
        .unwrap();
    writer.write_all_at(b"NEW", 0).unwrap();
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::new(file.id().mtime_sec as u64, file.id().mtime_nsec as u32);
    writer.set_modified(modified).unwrap();
    assert!(!file.id().unchanged_in(file.file()).unwrap());
}
