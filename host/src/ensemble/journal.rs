//! The undo journal under the writer: an HDF5 file driver that makes each flush atomic against
//! the death of the process.
//!
//! HDF5 updates a file in place: a flush rewrites the last, partly filled chunk of every
//! dataset (its Fletcher32 checksum included), the object headers that hold the extents and the
//! B-tree nodes that index the chunks. A process killed in the middle of a flush (SIGKILL, the
//! OOM killer, a crash) can leave some of those writes done and others not, or one write torn at
//! a page boundary: a chunk whose checksum no longer matches, or an index that disagrees with
//! the extents. Neither the killed file nor a resumed run could read it.
//!
//! This driver is HDF5's POSIX driver (`sec2`) with one addition. The bytes of the file as of
//! the last commit (`[0, committed_eof)`) are what the last checkpoint refers to; before the
//! first write of a flush overwrites any of them, their old contents are appended to the
//! journal `<file>.journal` (one record per range: address, length, bytes and a checksum;
//! each range once per flush). A commit ([`Journal::commit`], after the flush and its `fsync`)
//! voids the journal (its first eight bytes; the next flush starts a new epoch, and records
//! carry their epoch in their CRC), and closing the file deletes it. [`recover`], run before any later open of the file, finds a journal
//! left by a killed writer and writes the old bytes back and cuts the file to its committed
//! length: the file is then bit for bit what the last commit left. A reader that may not write
//! the file reads the journal instead ([`read_undo`]) and its driver overlays the old bytes on
//! every read (and reports the committed length), which shows it the same state and changes
//! nothing. A record that the kill cut
//! short fails its checksum and is skipped: its range had not been overwritten yet, because
//! every overwrite waits for its record.
//!
//! The driver never shrinks the file below the committed length while a journal is kept (the
//! bytes beyond HDF5's end of allocation are unused; they go at the next commit's truncation
//! by the next flush), so a rollback never needs bytes that a truncation threw away.
//!
//! What this guards against is the process dying at any moment: the journal and the data are
//! both in the kernel's page cache, which the process's death does not touch. A power cut in
//! the middle of a flush is not covered: the journal is not `fsync`ed before the overwrites it
//! guards (that would cost an `fsync` per overwritten range).
//!
//! Files are plain HDF5: the driver writes no driver information into the superblock, so h5py
//! and every other reader open them with the default driver. Readers in latflow use this
//! driver too (without a journal), so that HDF5 recognises a file the same process is writing
//! and shares it.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr};
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use hdf5::plist::FileAccess;
use hdf5_sys::h5i::hid_t;

/// `haddr_t` and `hsize_t` of HDF5.
type Haddr = u64;
/// `herr_t` of HDF5: 0 on success, negative on failure.
type Herr = c_int;
/// `H5FD_mem_t` of HDF5 (an enum, passed as `int`).
type MemType = c_int;

/// HDF5's `H5FD_t`: the public head of every open file of a driver, filled in by HDF5 after
/// the driver's `open` returns (field for field as in `H5FDdevelop.h`).
#[repr(C)]
struct H5fdPublic {
    driver_id: hid_t,
    cls: *const H5fdClass,
    fileno: c_ulong,
    access_flags: c_uint,
    feature_flags: c_ulong,
    maxaddr: Haddr,
    base_addr: Haddr,
    threshold: u64,
    alignment: u64,
    paged_aggr: bool,
}

type Unused = Option<unsafe extern "C" fn()>;

/// HDF5's `H5FD_class_t`, version 1 (`H5FD_CLASS_VERSION`), field for field as in
/// `H5FDdevelop.h`. Callbacks this driver does not provide are `None` (NULL).
#[repr(C)]
struct H5fdClass {
    version: c_uint,
    value: c_int,
    name: *const c_char,
    maxaddr: Haddr,
    fc_degree: c_int,
    terminate: Unused,
    sb_size: Unused,
    sb_encode: Unused,
    sb_decode: Unused,
    fapl_size: usize,
    fapl_get: Unused,
    fapl_copy: Option<unsafe extern "C" fn(*const c_void) -> *mut c_void>,
    fapl_free: Option<unsafe extern "C" fn(*mut c_void) -> Herr>,
    dxpl_size: usize,
    dxpl_copy: Unused,
    dxpl_free: Unused,
    open: Option<unsafe extern "C" fn(*const c_char, c_uint, hid_t, Haddr) -> *mut H5fdPublic>,
    close: Option<unsafe extern "C" fn(*mut H5fdPublic) -> Herr>,
    cmp: Option<unsafe extern "C" fn(*const H5fdPublic, *const H5fdPublic) -> c_int>,
    query: Option<unsafe extern "C" fn(*const H5fdPublic, *mut c_ulong) -> Herr>,
    get_type_map: Unused,
    alloc: Unused,
    free: Unused,
    get_eoa: Option<unsafe extern "C" fn(*const H5fdPublic, MemType) -> Haddr>,
    set_eoa: Option<unsafe extern "C" fn(*mut H5fdPublic, MemType, Haddr) -> Herr>,
    get_eof: Option<unsafe extern "C" fn(*const H5fdPublic, MemType) -> Haddr>,
    get_handle: Option<unsafe extern "C" fn(*mut H5fdPublic, hid_t, *mut *mut c_void) -> Herr>,
    read: Option<unsafe extern "C" fn(*mut H5fdPublic, MemType, hid_t, Haddr, usize, *mut c_void) -> Herr>,
    write: Option<unsafe extern "C" fn(*mut H5fdPublic, MemType, hid_t, Haddr, usize, *const c_void) -> Herr>,
    read_vector: Unused,
    write_vector: Unused,
    read_selection: Unused,
    write_selection: Unused,
    flush: Unused,
    truncate: Option<unsafe extern "C" fn(*mut H5fdPublic, hid_t, bool) -> Herr>,
    lock: Option<unsafe extern "C" fn(*mut H5fdPublic, bool) -> Herr>,
    unlock: Option<unsafe extern "C" fn(*mut H5fdPublic) -> Herr>,
    del: Unused,
    ctl: Unused,
    fl_map: [MemType; 7],
}

/// The class is immutable and only read by HDF5.
struct SyncClass(H5fdClass);
// SAFETY: the class holds a pointer to a static string and function pointers, never written.
unsafe impl Sync for SyncClass {}

const H5FD_CLASS_VERSION: c_uint = 1;
/// Driver value (HDF5 reserves 0–255 for its own drivers).
const DRIVER_VALUE: c_int = 0x2a7;
const H5F_CLOSE_WEAK: c_int = 1;
const H5FD_MEM_SUPER: MemType = 1;
const H5FD_MEM_DRAW: MemType = 3;
const H5F_ACC_RDWR: c_uint = 0x1;
const H5F_ACC_TRUNC: c_uint = 0x2;
const H5F_ACC_EXCL: c_uint = 0x4;
const H5F_ACC_CREAT: c_uint = 0x10;
/// `HADDR_MAX` of HDF5's POSIX driver: the largest signed 64-bit offset.
const MAXADDR: Haddr = (i64::MAX as u64) - 1;
/// The features of HDF5's POSIX driver that change how HDF5 lays out and buffers I/O:
/// metadata aggregation and accumulation, the data sieve, small-data aggregation, and a
/// handle that is a pointer to the POSIX descriptor.
const FEATURES: c_ulong = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80;

static CLASS: SyncClass = SyncClass(H5fdClass {
    version: H5FD_CLASS_VERSION,
    value: DRIVER_VALUE,
    name: c"latflow_journal".as_ptr(),
    maxaddr: MAXADDR,
    fc_degree: H5F_CLOSE_WEAK,
    terminate: None,
    sb_size: None,
    sb_encode: None,
    sb_decode: None,
    fapl_size: std::mem::size_of::<Info>(),
    fapl_get: None,
    fapl_copy: Some(fapl_copy),
    fapl_free: Some(fapl_free),
    dxpl_size: 0,
    dxpl_copy: None,
    dxpl_free: None,
    open: Some(open),
    close: Some(close),
    cmp: Some(cmp),
    query: Some(query),
    get_type_map: None,
    alloc: None,
    free: None,
    get_eoa: Some(get_eoa),
    set_eoa: Some(set_eoa),
    get_eof: Some(get_eof),
    get_handle: Some(get_handle),
    read: Some(read),
    write: Some(write),
    read_vector: None,
    write_vector: None,
    read_selection: None,
    write_selection: None,
    flush: None,
    truncate: Some(truncate),
    lock: Some(lock),
    unlock: Some(unlock),
    del: None,
    ctl: None,
    // H5FD_FLMAP_DICHOTOMY: raw data and global heaps apart from everything else
    fl_map: [H5FD_MEM_SUPER, H5FD_MEM_SUPER, H5FD_MEM_SUPER, H5FD_MEM_DRAW, H5FD_MEM_DRAW, H5FD_MEM_SUPER, H5FD_MEM_SUPER],
});

/// The driver's id, registered with HDF5 once per process (HDF5's own drivers keep theirs the
/// same way); immutable once set.
static DRIVER: OnceLock<Result<hid_t, String>> = OnceLock::new();

fn driver_id() -> Result<hid_t, String> {
    DRIVER
        .get_or_init(|| {
            // SAFETY: the class is a valid, 'static H5FD_class_t of the linked HDF5's layout;
            // the call is made under the crate's library lock, as every HDF5 call is.
            let id = hdf5::sync::sync(|| unsafe {
                hdf5_sys::h5fd::H5FDregister(&CLASS.0 as *const H5fdClass as *const hdf5_sys::h5fd::H5FD_class_t)
            });
            if id < 0 {
                Err("HDF5 refused to register latflow's file driver".to_owned())
            } else {
                Ok(id)
            }
        })
        .clone()
}

/// The driver's file-access information: the journal of a writer, or none (a reader); for a
/// reader, optionally the undo of a killed writer's journal that it could not roll back.
#[repr(C)]
struct Info {
    /// `Arc::into_raw` of the writer's journal, or null.
    journal: *const Journal,
    /// `Arc::into_raw` of the reader's undo view, or null.
    undo: *const Undo,
}

unsafe extern "C" fn fapl_copy(old: *const c_void) -> *mut c_void {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let old = &*(old as *const Info);
        if !old.journal.is_null() {
            Arc::increment_strong_count(old.journal);
        }
        if !old.undo.is_null() {
            Arc::increment_strong_count(old.undo);
        }
        Box::into_raw(Box::new(Info { journal: old.journal, undo: old.undo })) as *mut c_void
    }
}

unsafe extern "C" fn fapl_free(info: *mut c_void) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let info = Box::from_raw(info as *mut Info);
        if !info.journal.is_null() {
            drop(Arc::from_raw(info.journal));
        }
        if !info.undo.is_null() {
            drop(Arc::from_raw(info.undo));
        }
        0
    }
}

/// A file-access property list with this driver: `journal` for a writer, `None` for a reader.
/// `undo` (readers only) makes the reader see the file as the undo leaves it: the state of the
/// last commit of a writer that was killed in the middle of a flush, which this reader may not
/// roll back on disk (no write permission). `base` holds the other settings (format bounds,
/// locking, metadata cache).
pub(super) fn fapl(base: FileAccess, journal: Option<&Arc<Journal>>, undo: Option<&Arc<Undo>>) -> Result<FileAccess, String> {
    let driver = driver_id()?;
    let info = Info { journal: journal.map_or(std::ptr::null(), Arc::as_ptr), undo: undo.map_or(std::ptr::null(), Arc::as_ptr) };
    // SAFETY: `base` is a live file-access list; HDF5 copies `info` with `fapl_copy` (which
    // takes its own reference to the journal) before the call returns.
    let rc = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5p::H5Pset_driver(base.id(), driver, &info as *const Info as *const c_void)
    });
    if rc < 0 {
        return Err("HDF5 refused latflow's file driver for the file-access list".into());
    }
    Ok(base)
}

/// The state of one open file: HDF5's public head first, then the driver's own fields.
#[repr(C)]
struct DriverFile {
    public: H5fdPublic,
    file: fs::File,
    /// The descriptor, for `get_handle` (HDF5 expects a pointer to an `int`).
    fd: c_int,
    eoa: Haddr,
    eof: Haddr,
    device: u64,
    inode: u64,
    /// The writer's journal; `None` for a reader.
    journal: Option<Arc<Journal>>,
    /// A reader's view of a killed writer's last commit; `None` otherwise.
    undo: Option<Arc<Undo>>,
}

/// Runs a callback body, turning an error or a panic into HDF5's failure code (a panic must
/// not unwind into C). The error is kept in the journal, where there is one, for the writer's
/// message.
fn guarded(journal: Option<&Arc<Journal>>, writes: bool, body: impl FnOnce() -> io::Result<()>) -> Herr {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            if let Some(j) = journal {
                j.keep_error(e, writes);
            }
            -1
        }
        Err(_) => {
            if let Some(j) = journal {
                j.keep_error(io::Error::other("panic in latflow's HDF5 file driver"), writes);
            }
            -1
        }
    }
}

unsafe extern "C" fn open(name: *const c_char, flags: c_uint, fapl: hid_t, maxaddr: Haddr) -> *mut H5fdPublic {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        if name.is_null() || maxaddr == 0 || maxaddr > MAXADDR {
            return std::ptr::null_mut();
        }
        let info = hdf5_sys::h5p::H5Pget_driver_info(fapl) as *const Info;
        let journal = if info.is_null() || (*info).journal.is_null() {
            None
        } else {
            Arc::increment_strong_count((*info).journal);
            Some(Arc::from_raw((*info).journal))
        };
        let undo = if info.is_null() || (*info).undo.is_null() || flags & H5F_ACC_RDWR != 0 {
            None
        } else {
            Arc::increment_strong_count((*info).undo);
            Some(Arc::from_raw((*info).undo))
        };
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> io::Result<DriverFile> {
            let path = Path::new(std::ffi::OsStr::from_encoded_bytes_unchecked(CStr::from_ptr(name).to_bytes()));
            let mut options = fs::OpenOptions::new();
            options.read(true);
            if flags & H5F_ACC_RDWR != 0 {
                options.write(true);
            }
            if flags & H5F_ACC_TRUNC != 0 {
                options.truncate(true);
            }
            if flags & H5F_ACC_CREAT != 0 {
                if flags & H5F_ACC_EXCL != 0 {
                    options.create_new(true);
                } else {
                    options.create(true);
                }
            }
            options.mode(0o666);
            let file = options.open(path)?;
            let meta = file.metadata()?;
            if let Some(j) = &journal {
                j.opened(meta.len());
            }
            Ok(DriverFile {
                public: std::mem::zeroed(),
                fd: file.as_raw_fd(),
                file,
                eoa: 0,
                eof: undo.as_ref().map_or(meta.len(), |u| u.committed),
                device: meta.dev(),
                inode: meta.ino(),
                journal: journal.clone(),
                undo,
            })
        }));
        match opened {
            Ok(Ok(f)) => Box::into_raw(Box::new(f)) as *mut H5fdPublic,
            Ok(Err(e)) => {
                if let Some(j) = &journal {
                    j.keep_error(e, false);
                }
                std::ptr::null_mut()
            }
            Err(_) => std::ptr::null_mut(),
        }
    }
}

unsafe extern "C" fn close(file: *mut H5fdPublic) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let file = Box::from_raw(file as *mut DriverFile);
        let journal = file.journal.clone();
        // HDF5 has written all it holds: the file is whole, and the journal can go
        guarded(journal.as_ref(), true, || match &file.journal {
            Some(j) => {
                file.file.sync_all()?;
                j.commit_at(file.eof)?;
                j.closed()
            }
            None => Ok(()),
        })
    }
}

unsafe extern "C" fn cmp(a: *const H5fdPublic, b: *const H5fdPublic) -> c_int {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let (a, b) = (&*(a as *const DriverFile), &*(b as *const DriverFile));
        match (a.device, a.inode).cmp(&(b.device, b.inode)) {
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 1,
        }
    }
}

unsafe extern "C" fn query(_file: *const H5fdPublic, flags: *mut c_ulong) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        if !flags.is_null() {
            *flags = FEATURES;
        }
        0
    }
}

unsafe extern "C" fn get_eoa(file: *const H5fdPublic, _ty: MemType) -> Haddr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        (*(file as *const DriverFile)).eoa
    }
}

unsafe extern "C" fn set_eoa(file: *mut H5fdPublic, _ty: MemType, addr: Haddr) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        if addr > MAXADDR {
            return -1;
        }
        (*(file as *mut DriverFile)).eoa = addr;
        0
    }
}

unsafe extern "C" fn get_eof(file: *const H5fdPublic, _ty: MemType) -> Haddr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        (*(file as *const DriverFile)).eof
    }
}

unsafe extern "C" fn get_handle(file: *mut H5fdPublic, _fapl: hid_t, handle: *mut *mut c_void) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        if handle.is_null() {
            return -1;
        }
        *handle = &mut (*(file as *mut DriverFile)).fd as *mut c_int as *mut c_void;
        0
    }
}

unsafe extern "C" fn read(file: *mut H5fdPublic, _ty: MemType, _dxpl: hid_t, addr: Haddr, size: usize, buf: *mut c_void) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let f = &*(file as *const DriverFile);
        let out = std::slice::from_raw_parts_mut(buf as *mut u8, size);
        guarded(f.journal.as_ref(), false, || {
            if addr.checked_add(size as u64).is_none_or(|end| end > f.eoa) {
                return Err(io::Error::other(format!("read past the end of allocation ({addr} + {size} > {})", f.eoa)));
            }
            // like HDF5's POSIX driver: bytes past the end of the file read as zeros
            let mut done = 0;
            while done < size {
                match f.file.read_at(&mut out[done..], addr + done as u64) {
                    Ok(0) => {
                        out[done..].fill(0);
                        break;
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(u) = &f.undo {
                u.overlay(addr, out);
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn write(file: *mut H5fdPublic, _ty: MemType, _dxpl: hid_t, addr: Haddr, size: usize, buf: *const c_void) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let f = &mut *(file as *mut DriverFile);
        let data = std::slice::from_raw_parts(buf as *const u8, size);
        let journal = f.journal.clone();
        guarded(journal.as_ref(), true, || {
            let end = addr
                .checked_add(size as u64)
                .filter(|&end| end <= f.eoa)
                .ok_or_else(|| io::Error::other(format!("write past the end of allocation ({addr} + {size} > {})", f.eoa)))?;
            if let Some(j) = &f.journal {
                j.before_overwrite(&f.file, addr, end)?;
            }
            f.file.write_all_at(data, addr)?;
            f.eof = f.eof.max(end);
            Ok(())
        })
    }
}

unsafe extern "C" fn truncate(file: *mut H5fdPublic, _dxpl: hid_t, _closing: bool) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let f = &mut *(file as *mut DriverFile);
        let journal = f.journal.clone();
        guarded(journal.as_ref(), true, || {
            // never below the committed length while a journal is kept: a rollback needs those bytes
            let target = match &f.journal {
                Some(j) => f.eoa.max(j.committed_eof()?),
                None => f.eoa,
            };
            if target != f.eof {
                f.file.set_len(target)?;
                f.eof = target;
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn lock(file: *mut H5fdPublic, rw: bool) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let f = &*(file as *const DriverFile);
        let op = if rw { libc::LOCK_EX } else { libc::LOCK_SH };
        if libc::flock(f.fd, op | libc::LOCK_NB) < 0 {
            // like HDF5's POSIX driver: a file system without locks is no error
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                return 0;
            }
            return -1;
        }
        0
    }
}

unsafe extern "C" fn unlock(file: *mut H5fdPublic) -> Herr {
    // SAFETY: HDF5 calls this with the pointers of its contract: a file this driver's `open`
    // made, buffers of the stated sizes, driver information this driver's `fapl_copy` made.
    unsafe {
        let f = &*(file as *const DriverFile);
        if libc::flock(f.fd, libc::LOCK_UN) < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return -1;
        }
        0
    }
}

/// The journal beside `path`: `<path>.journal`.
pub(super) fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// First bytes of a live journal; then the committed length and the epoch (u64 each,
/// little-endian), then the records.
const MAGIC: &[u8; 8] = b"LFJRNL01";
/// First bytes of a journal whose records are committed (void): a writer keeps its journal
/// file between flushes and voids it at each commit.
const VOID: &[u8; 8] = b"LFJRNLok";
/// Bytes of the head: magic, committed length, epoch.
const HEAD: usize = 24;

/// CRC-32 over a record's epoch, address, length and bytes (a record left over from an
/// earlier epoch fails it).
fn record_sum(epoch: u64, addr: u64, old: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&addr.to_le_bytes());
    h.update(&(old.len() as u64).to_le_bytes());
    h.update(old);
    h.finalize()
}

/// Bytes of a record besides the old bytes: address and length (u64 each) and the CRC (u32).
const FRAMING: usize = 20;

/// A writer's undo journal (see the module documentation). Shared by the writer, which
/// commits, and the driver's open file, which records.
pub(super) struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// The file's length at the last commit: bytes below it are what the checkpoint refers to.
    committed_eof: u64,
    /// Ranges `[start, end)` recorded since the last commit, sorted and disjoint (start → end).
    recorded: Vec<(u64, u64)>,
    /// The journal file, created at the writer's first overwrite and kept until it closes.
    log: Option<fs::File>,
    /// Commits so far: the epoch of the records being written.
    epoch: u64,
    /// The journal's head for this epoch is written (records since the last commit exist).
    live: bool,
    /// Where the next record goes.
    tail: u64,
    /// The first I/O error the driver met, for the writer's message.
    error: Option<io::Error>,
    /// A write, truncation or close failed: the file may be half-written, so the journal is
    /// kept (the next open rolls the file back) and no commit is taken.
    failed: bool,
}

impl Journal {
    /// The journal of the file `path` (which [`recover`] has made whole).
    pub(super) fn new(path: &Path) -> Arc<Journal> {
        Arc::new(Journal {
            path: journal_path(path),
            state: Mutex::new(State { committed_eof: 0, recorded: Vec::new(), log: None, epoch: 0, live: false, tail: 0, error: None, failed: false }),
        })
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| io::Error::other("the journal's lock is poisoned"))
    }

    /// The driver opened the file: its present length is committed.
    fn opened(&self, len: u64) {
        if let Ok(mut s) = self.state() {
            s.committed_eof = len;
            s.recorded.clear();
        }
    }

    fn committed_eof(&self) -> io::Result<u64> {
        Ok(self.state()?.committed_eof)
    }

    /// Keeps the driver's error for the writer's message; `failed` marks an error that may have
    /// left the file half-written.
    fn keep_error(&self, e: io::Error, failed: bool) {
        if let Ok(mut s) = self.state() {
            s.error.get_or_insert(e);
            s.failed |= failed;
        }
    }

    /// The first I/O error the driver met since the last call, if any.
    pub(super) fn take_error(&self) -> Option<io::Error> {
        self.state().ok().and_then(|mut s| s.error.take())
    }

    /// Before `[addr, end)` of `file` is written: records the committed bytes in it that are
    /// not recorded yet.
    fn before_overwrite(&self, file: &fs::File, addr: u64, end: u64) -> io::Result<()> {
        let mut s = self.state()?;
        let end = end.min(s.committed_eof);
        if addr >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut at = addr;
        for &(a, b) in &s.recorded {
            if b <= at {
                continue;
            }
            if a >= end {
                break;
            }
            if a > at {
                gaps.push((at, a));
            }
            at = at.max(b);
            if at >= end {
                break;
            }
        }
        if at < end {
            gaps.push((at, end));
        }
        if gaps.is_empty() {
            return Ok(());
        }
        if s.log.is_none() {
            s.log = Some(fs::OpenOptions::new().write(true).create(true).truncate(true).open(&self.path)?);
        }
        if !s.live {
            s.epoch += 1;
            let mut head = MAGIC.to_vec();
            head.extend_from_slice(&s.committed_eof.to_le_bytes());
            head.extend_from_slice(&s.epoch.to_le_bytes());
            s.log.as_ref().expect("opened above").write_all_at(&head, 0)?;
            s.live = true;
            s.tail = HEAD as u64;
        }
        for &(a, b) in &gaps {
            let mut rec = Vec::with_capacity((b - a) as usize + FRAMING);
            rec.resize(16 + (b - a) as usize, 0);
            file.read_exact_at(&mut rec[16..], a)?;
            rec[..8].copy_from_slice(&a.to_le_bytes());
            rec[8..16].copy_from_slice(&(b - a).to_le_bytes());
            let sum = record_sum(s.epoch, a, &rec[16..]);
            rec.extend_from_slice(&sum.to_le_bytes());
            let tail = s.tail;
            s.log.as_ref().expect("opened above").write_all_at(&rec, tail)?;
            s.tail += rec.len() as u64;
        }
        // merge [addr, end) into the recorded ranges
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(s.recorded.len() + 1);
        let (mut lo, mut hi) = (addr, end);
        let mut placed = false;
        for &(a, b) in &s.recorded {
            if b < lo {
                merged.push((a, b));
            } else if a > hi {
                if !placed {
                    merged.push((lo, hi));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            merged.push((lo, hi));
        }
        s.recorded = merged;
        Ok(())
    }

    /// Commits the file as it is on disk now: HDF5 has flushed it and it was `fsync`ed. The
    /// journal is voided (its first bytes overwritten) and the file's present length becomes
    /// the committed one.
    pub(super) fn commit(&self, data_path: &Path) -> io::Result<()> {
        let len = fs::metadata(data_path)?.len();
        self.commit_at(len)
    }

    fn commit_at(&self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        if s.failed {
            // the journal stays: the next open rolls the file back to the last commit
            return Err(io::Error::other("an earlier write failed; the file is rolled back to its last checkpoint when it is next opened"));
        }
        if s.live {
            s.log.as_ref().expect("live journals are open").write_all_at(VOID, 0)?;
            s.live = false;
        }
        s.recorded.clear();
        s.committed_eof = len;
        Ok(())
    }

    /// The writer closed the file after a last commit: the journal file goes.
    fn closed(&self) -> io::Result<()> {
        let mut s = self.state()?;
        if s.log.take().is_some() {
            remove(&self.path)?;
        }
        Ok(())
    }
}

/// What a killed writer's live journal undoes: the file's length at the last commit, and the
/// old bytes of every range the unfinished flush overwrote (disjoint ranges, each below
/// `committed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Undo {
    pub committed: u64,
    pub records: Vec<(u64, Vec<u8>)>,
}

impl Undo {
    /// Overlays the committed state on `out`, which holds the file's current bytes from `addr`
    /// on: the old bytes where a record covers them, zeros at and beyond the committed length.
    fn overlay(&self, addr: u64, out: &mut [u8]) {
        let end = addr.saturating_add(out.len() as u64);
        for (start, old) in &self.records {
            let stop = start + old.len() as u64;
            let (lo, hi) = (addr.max(*start), end.min(stop));
            if lo < hi {
                out[(lo - addr) as usize..(hi - addr) as usize].copy_from_slice(&old[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        if end > self.committed {
            out[self.committed.saturating_sub(addr) as usize..].fill(0);
        }
    }
}

/// The journal beside `path`, read without touching anything: `Ok(None)` where there is none,
/// or where it undoes nothing (void, or cut short in its head before any overwrite).
/// Errors if the journal is not one of latflow's.
pub(super) fn read_undo(path: &Path) -> io::Result<Option<Undo>> {
    let jpath = journal_path(path);
    let bytes = match fs::read(&jpath) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_undo_bytes(&bytes).map_err(|e| io::Error::other(format!("{} {e}", jpath.display())))
}

/// [`read_undo`] of a journal's bytes; the error says what is wrong (after the journal's name).
pub(super) fn read_undo_bytes(bytes: &[u8]) -> io::Result<Option<Undo>> {
    if bytes.starts_with(VOID) {
        return Ok(None); // committed: nothing to undo
    }
    if bytes.len() < HEAD {
        // cut short while its head was written: nothing was overwritten yet
        if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Ok(None);
        }
        return Err(io::Error::other("is not a latflow journal"));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(io::Error::other("is not a latflow journal"));
    }
    let committed = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let epoch = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let mut records = Vec::new();
    let mut at = HEAD;
    while at + 16 <= bytes.len() {
        let addr = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        let Some(stop) = usize::try_from(len).ok().and_then(|l| (at + 16).checked_add(l)).and_then(|s| s.checked_add(4)) else {
            break;
        };
        if stop > bytes.len() {
            break; // cut short by the kill: its range was not overwritten
        }
        let old = &bytes[at + 16..stop - 4];
        let sum = u32::from_le_bytes(bytes[stop - 4..stop].try_into().expect("4 bytes"));
        // a record cut short, or one of an earlier epoch beyond this epoch's last: the end
        if sum != record_sum(epoch, addr, old) || addr.checked_add(len).is_none_or(|e| e > committed) {
            break;
        }
        records.push((addr, old.to_vec()));
        at = stop;
    }
    Ok(Some(Undo { committed, records }))
}

/// If a killed writer left a live journal beside `path`, writes the journaled bytes back, cuts
/// the file to its committed length, `fsync`s it and deletes the journal (a void one is just
/// deleted). Returns whether anything was rolled back. The caller holds the file's exclusive
/// lock. Errors if the journal is not one of latflow's (it is then left alone) or if the file
/// cannot be repaired.
pub(super) fn recover(path: &Path) -> io::Result<bool> {
    let jpath = journal_path(path);
    let Some(undo) = read_undo(path)? else {
        remove(&jpath)?;
        return Ok(false);
    };
    let file = fs::OpenOptions::new().write(true).open(path)?;
    for (addr, old) in &undo.records {
        file.write_all_at(old, *addr)?;
    }
    file.set_len(undo.committed)?;
    file.sync_all()?;
    fs::remove_file(&jpath)?;
    Ok(true)
}

/// Deletes a journal left beside `path` by an earlier writer: the caller is about to replace
/// the file, and the journal must not be applied to the new one.
pub(super) fn discard(path: &Path) -> io::Result<()> {
    remove(&journal_path(path))
}

/// Deletes the journal file `jpath`; one that is not there is no error.
fn remove(jpath: &Path) -> io::Result<()> {
    match fs::remove_file(jpath) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping overwrites record each committed byte once; bytes past the committed length
    /// are not recorded; a rollback restores the committed bytes and length.
    #[test]
    fn overlapping_overwrites_are_recorded_once_and_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let committed: Vec<u8> = (0..64u8).collect();
        fs::write(&path, &committed).unwrap();
        let file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let j = Journal::new(&path);
        j.opened(64);
        for (a, b) in [(10u64, 20u64), (15, 30), (5, 12), (60, 80), (100, 120)] {
            j.before_overwrite(&file, a, b).unwrap();
            file.write_all_at(&vec![0xee; (b - a) as usize], a).unwrap();
        }
        assert_eq!(j.state().unwrap().recorded, vec![(5, 30), (60, 64)]);
        let log = fs::read(journal_path(&path)).unwrap();
        // head, then records [10,20) [20,30) [5,10) [60,64), each with its framing
        assert_eq!(log.len(), HEAD + 4 * FRAMING + 10 + 10 + 5 + 4);
        drop(file);
        assert!(recover(&path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), committed);
        assert!(!journal_path(&path).exists());
        assert!(!recover(&path).unwrap(), "no journal, nothing to do");
    }

    /// A journal cut short inside its head undid nothing and is deleted; a short file that is
    /// not a journal's head is refused and left alone.
    #[test]
    fn a_journal_cut_short_in_its_head_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::write(&path, [7u8; 16]).unwrap();
        for head in [&b"LFJ"[..], &b"LFJRNL01"[..], &b"LFJRNL01\x05\0\0"[..]] {
            fs::write(journal_path(&path), head).unwrap();
            assert!(!recover(&path).unwrap());
            assert!(!journal_path(&path).exists());
        }
        fs::write(journal_path(&path), b"LFX").unwrap();
        assert!(recover(&path).unwrap_err().to_string().contains("not a latflow journal"));
        assert!(journal_path(&path).exists());
        assert_eq!(fs::read(&path).unwrap(), vec![7u8; 16]);
    }

    /// A commit voids the journal and makes the present length the committed one; the next
    /// epoch's records are the only ones applied.
    #[test]
    fn a_commit_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::write(&path, [1u8; 32]).unwrap();
        let file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let j = Journal::new(&path);
        j.opened(32);
        j.before_overwrite(&file, 0, 8).unwrap();
        j.before_overwrite(&file, 16, 24).unwrap();
        file.write_all_at(&[2u8; 40], 0).unwrap();
        j.commit(&path).unwrap();
        assert!(fs::read(journal_path(&path)).unwrap().starts_with(VOID));
        assert_eq!(j.committed_eof().unwrap(), 40);
        j.before_overwrite(&file, 0, 8).unwrap();
        file.write_all_at(&[3u8; 8], 0).unwrap();
        // the first epoch's record of [16, 24) lies beyond the second epoch's last record; its
        // CRC names the first epoch, so it is not applied
        assert_eq!(fs::metadata(journal_path(&path)).unwrap().len() as usize, HEAD + 2 * FRAMING + 16);
        drop(file);
        assert!(recover(&path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), vec![2u8; 40]);
    }
}
