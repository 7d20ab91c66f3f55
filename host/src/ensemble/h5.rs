//! HDF5 helpers: files, attributes, datasets, row appends and truncation, and the errors they
//! map to.

use std::str::FromStr;

use hdf5::file::{
    CacheDecreaseMode, CacheIncreaseMode, FileAccess, FlashIncreaseMode, LibraryVersion,
    MetadataCacheConfig,
};
use std::sync::Arc;

use super::journal::{self, Journal};
use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::MinorErrorCode;
use std::path::Path;

use hdf5::{Dataset, File, Group, H5Type, Location};

use super::*;

/// An open HDF5 file and the `flock` that guards it.
///
/// The lock is taken by latflow on a descriptor of its own, opened close-on-exec, before
/// HDF5 opens the file (with HDF5's own locking off). If the lock lived on the descriptor of
/// HDF5's driver, a child process that inherited it would hold the lock for its whole life
/// and every later open of the file would fail with "unable to lock file". (latflow's driver
/// opens close-on-exec, and [`close_on_exec`] makes sure of it.) (A reader keeps HDF5's own shared lock for the short time it has the
/// file open: see [`open_file`].) The lock is the same `flock` that HDF5 takes, so h5py and other HDF5
/// readers still see a file being written as locked, and latflow sees theirs. Fields drop in
/// order: the HDF5 file closes before the lock is released.
pub(crate) struct LockedFile {
    file: File,
    /// The writer's exclusive lock, and its `fsync` handle; `None` for a reader (see
    /// [`open_file`]).
    lock: Option<std::fs::File>,
    /// The writer's undo journal (see [`journal`](super::journal)); `None` for a reader.
    journal: Option<Arc<Journal>>,
}

impl LockedFile {
    /// Flushes HDF5's buffers, `fsync`s the file through the lock's descriptor (the same
    /// file) and commits the journal: from here on, a killed writer's file rolls back to this
    /// state. A writer's call; a reader has nothing to sync and gets an error.
    pub(super) fn sync(&self, path: &Path) -> Result<(), EnsembleError> {
        let journal_error = |error| EnsembleError::Io { path: path.to_owned(), object: "file (journal)".into(), error };
        if let Err(e) = self.file.flush() {
            return Err(match self.journal.as_ref().and_then(|j| j.take_error()) {
                Some(error) => journal_error(error),
                None => h5(path, "file (flush)")(e),
            });
        }
        let lock = self.lock.as_ref().ok_or_else(|| invalid(path, "file", "opened for reading, not writing"))?;
        lock.sync_all().map_err(|error| EnsembleError::Io { path: path.to_owned(), object: "file (fsync)".into(), error })?;
        match &self.journal {
            Some(j) => j.commit(path).map_err(journal_error),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for LockedFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

/// Takes the exclusive lock on `lock` without waiting.
fn take_lock(path: &Path, lock: &std::fs::File) -> Result<(), EnsembleError> {
    match lock.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(EnsembleError::Hdf5 {
            path: path.to_owned(),
            object: "file (lock)".into(),
            detail: "the file is locked: another process has it open (is another process writing it?)".into(),
        }),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(EnsembleError::Io { path: path.to_owned(), object: "file (lock)".into(), error })
        }
    }
}

/// Creates a file for writing: checks the directory, refuses to overwrite unless asked, and
/// refuses a file that another process has open (the exclusive lock of [`LockedFile`]).
pub(super) fn create_file(path: &Path, overwrite: bool) -> Result<LockedFile, EnsembleError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(EnsembleError::MissingDirectory { path: path.to_owned(), dir: parent.to_owned() });
    }
    if path.is_dir() {
        return Err(invalid(path, "file", "is a directory"));
    }
    if !overwrite && path.exists() {
        return Err(EnsembleError::AlreadyExists { path: path.to_owned() });
    }
    // the lock's descriptor creates the file (std opens close-on-exec); HDF5 then truncates it
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if overwrite {
        options.create(true);
    } else {
        options.create_new(true);
    }
    let lock = options.open(path).map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            EnsembleError::AlreadyExists { path: path.to_owned() }
        } else {
            EnsembleError::Io { path: path.to_owned(), object: "file (create)".into(), error }
        }
    })?;
    if let Err(e) = take_lock(path, &lock) {
        // another process has the file open: one this call made is removed, one that was there
        // (overwrite) is left as it is
        if !overwrite {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    let journal = Journal::new(path);
    let made = (|| {
        // a journal of an earlier file must never be applied to this one
        journal::discard(path).map_err(|error| EnsembleError::Io { path: path.to_owned(), object: "file (journal)".into(), error })?;
        let fapl = writer_fapl(path, &journal)?;
        let file = open_with(path, Open::Create, &fapl).map_err(h5(path, "file (create)"))?;
        close_on_exec(path, &file)?;
        Ok(file)
    })();
    match made {
        Ok(file) => Ok(LockedFile { file, lock: Some(lock), journal: Some(journal) }),
        Err(e) => {
            // the file is this call's or was truncated by it: remove it
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Marks the file's descriptor close-on-exec.
///
/// HDF5's POSIX driver opens files without `O_CLOEXEC`, and its lock is an `flock` on that
/// descriptor. A process started by another thread while the file is open (a plugin's helper,
/// a peer baseline, a test harness running the CLI) would otherwise inherit the descriptor and
/// hold the lock for its whole life, so that a later open of the same file fails with "unable
/// to lock file". Errors only if HDF5 cannot name the descriptor or `fcntl` refuses.
pub(crate) fn close_on_exec(path: &Path, file: &File) -> Result<(), EnsembleError> {
    #[cfg(unix)]
    {
        let fail = |what: String| EnsembleError::Hdf5 {
            path: path.to_owned(),
            object: "file (close-on-exec)".into(),
            detail: what,
        };
        let mut handle: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: `file.id()` is a live file id; HDF5 writes a pointer to the POSIX driver's
        // `int` descriptor into `handle`, valid while the file is open. The call is made under
        // the crate's library lock, as every other HDF5 call is.
        let rc = hdf5::sync::sync(|| unsafe {
            hdf5_sys::h5f::H5Fget_vfd_handle(file.id(), hdf5_sys::h5p::H5P_DEFAULT, &mut handle)
        });
        if rc < 0 || handle.is_null() {
            return Err(fail("HDF5 did not name the file's descriptor".into()));
        }
        // SAFETY: for the default (sec2) driver the handle points at the descriptor.
        let fd = unsafe { *(handle as *const std::ffi::c_int) };
        // SAFETY: fcntl on a descriptor we do not close; failures are reported, not ignored.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(fail(format!("fcntl(FD_CLOEXEC): {}", std::io::Error::last_os_error())));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
    Ok(())
}

/// Writes the provenance attributes and the schema version on the root group.
pub(super) fn write_provenance(path: &Path, file: &File, prov: &Provenance, schema_version: u32) -> Result<(), EnsembleError> {
    write_scalar_attr(path, file, "/", "schema_version", &schema_version)?;
    let strings: [(&str, &str); 11] = [
        ("latflow_version", &prov.latflow_version),
        ("run_card", &prov.run_card),
        ("card_path", &prov.card_path),
        ("card_hash", &prov.card_hash),
        ("plugin_name", &prov.plugin_name),
        ("plugin_version", &prov.plugin_version),
        ("plugin_path", &prov.plugin_path),
        ("created", &prov.created),
        ("theory_params", &prov.theory_params),
        ("layout", &prov.layout),
        ("model", &prov.model),
    ];
    for (name, value) in strings {
        write_str_attr(path, file, "/", name, value)?;
    }
    write_scalar_attr(path, file, "/", "seed", &prov.seed)
}

/// Opens a file for resume: schema version and card hash must match.
pub(super) fn open_for_resume(path: &Path, card_hash: &str, schema_version: u32) -> Result<LockedFile, EnsembleError> {
    let file = open_file(path, true)?;
    let found_version = check_schema_version(path, &file)?;
    if found_version != schema_version {
        return Err(mismatch(
            path,
            "attribute /schema_version",
            match schema_version {
                REPLICA_SCHEMA_VERSION => "the file is not a replica-exchange ensemble, but this run card has a replica ladder",
                _ => "the file is a replica-exchange ensemble, but this run card has no replica ladder",
            },
        ));
    }
    let found = read_str_attr(path, &file, "/", "card_hash")?;
    if found != card_hash {
        return Err(mismatch(
            path,
            "attribute /card_hash",
            format!(
                "the file belongs to another run card (file has {found:?}, this card is \
                 {card_hash:?})"
            ),
        ));
    }
    Ok(file)
}




pub(super) fn h5(path: &Path, object: impl Into<String>) -> impl FnOnce(hdf5::Error) -> EnsembleError {
    let path = path.to_owned();
    let object = object.into();
    move |e| EnsembleError::Hdf5 {
        path,
        object,
        detail: e.to_string(),
    }
}

pub(super) fn invalid(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Invalid {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

pub(super) fn mismatch(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Mismatch {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

pub(super) fn shape_err(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Shape {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

pub(super) fn corrupt(path: &Path, object: impl Into<String>, detail: impl Into<String>) -> EnsembleError {
    EnsembleError::Corrupt {
        path: path.to_owned(),
        object: object.into(),
        detail: detail.into(),
    }
}

pub(super) fn missing(path: &Path, object: impl Into<String>) -> EnsembleError {
    EnsembleError::Missing {
        path: path.to_owned(),
        object: object.into(),
    }
}

/// File-access settings of the writer: HDF5 1.8 format (readable by any h5py, no SWMR flag
/// that a killed writer would leave set), HDF5's own file locking off (the lock is
/// [`LockedFile`]'s, on a close-on-exec descriptor), no metadata-cache evictions (metadata
/// reaches the disk only at a flush, so a killed process leaves the last checkpoint's metadata
/// intact), and latflow's journaling driver (a flush cut short by a kill is rolled back).
fn writer_fapl(path: &Path, journal: &Arc<Journal>) -> Result<FileAccess, EnsembleError> {
    let mdc = MetadataCacheConfig {
        evictions_enabled: false,
        incr_mode: CacheIncreaseMode::Off,
        flash_incr_mode: FlashIncreaseMode::Off,
        decr_mode: CacheDecreaseMode::Off,
        ..MetadataCacheConfig::default()
    };
    let base = FileAccess::build()
        .libver_bounds(LibraryVersion::V18, LibraryVersion::V18)
        .file_locking(false)
        .mdc_config(&mdc)
        .finish()
        .map_err(h5(path, "file (access list)"))?;
    journal::fapl(base, Some(journal), None).map_err(|detail| EnsembleError::Hdf5 { path: path.to_owned(), object: "file (driver)".into(), detail })
}

/// File-access settings of a reader: latflow's driver without a journal (so that HDF5
/// recognises a file this process writes), with or without HDF5's shared lock, and with the
/// undo view of a killed writer's journal where the reader could not roll it back.
fn reader_fapl(path: &Path, locking: bool, undo: Option<&Arc<journal::Undo>>) -> Result<FileAccess, EnsembleError> {
    let base = FileAccess::build().file_locking(locking).finish().map_err(h5(path, "file (access list)"))?;
    journal::fapl(base, None, undo).map_err(|detail| EnsembleError::Hdf5 { path: path.to_owned(), object: "file (driver)".into(), detail })
}

/// How [`open_with`] opens a file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Read,
    ReadWrite,
    /// Create, truncating a file that exists.
    Create,
}

/// `H5Fopen` / `H5Fcreate` with a file-access list of latflow's driver (the `hdf5` crate's
/// builder knows only HDF5's own drivers).
fn open_with(path: &Path, mode: Open, fapl: &FileAccess) -> hdf5::Result<File> {
    use hdf5_sys::h5f::{H5Fcreate, H5Fopen, H5F_ACC_RDONLY, H5F_ACC_RDWR, H5F_ACC_TRUNC};
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| hdf5::Error::from("the file name holds a NUL byte"))?;
    hdf5::sync::sync(|| {
        // SAFETY: a NUL-terminated name and live property lists; the id HDF5 returns is new
        // (reference count 1) and handed to the `File` that owns it.
        let id = unsafe {
            match mode {
                Open::Read => H5Fopen(name.as_ptr(), H5F_ACC_RDONLY, fapl.id()),
                Open::ReadWrite => H5Fopen(name.as_ptr(), H5F_ACC_RDWR, fapl.id()),
                Open::Create => H5Fcreate(name.as_ptr(), H5F_ACC_TRUNC, hdf5_sys::h5p::H5P_DEFAULT, fapl.id()),
            }
        };
        let id = hdf5::h5check(id)?;
        // SAFETY: `id` is a new file id from the call above
        unsafe { hdf5::from_id::<File>(id) }
    })
}

/// Rolls back a flush that a killed writer left half done (see [`journal::recover`]); the
/// caller holds the file's exclusive lock.
fn recover(path: &Path) -> Result<(), EnsembleError> {
    journal::recover(path)
        .map(|_| ())
        .map_err(|error| EnsembleError::Io { path: path.to_owned(), object: "file (journal rollback)".into(), error })
}

/// A reader's roll-back of the journal a killed writer left beside `path`, under the writer's
/// lock: on disk where the reader may write the file (`Ok(None)` after it), otherwise in the
/// reader's view only (the undo its driver overlays on every read, so that it sees the last
/// commit, as a rolled-back file would show it, and changes nothing). A writer that still
/// holds the lock is alive and its journal is not ours to touch: `Ok(None)`, and the open
/// that follows meets its lock as before (or peeks, where HDF5's locking is off by
/// HDF5_USE_FILE_LOCKING=FALSE).
fn reader_rollback(path: &Path) -> Result<Option<Arc<journal::Undo>>, EnsembleError> {
    let io_error = |object: &str| {
        let object = object.to_owned();
        move |error| EnsembleError::Io { path: path.to_owned(), object, error }
    };
    let (lock, writable) = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(lock) => (lock, true),
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) => {
            (std::fs::File::open(path).map_err(io_error("file (open)"))?, false)
        }
        Err(error) => return Err(io_error("file (open)")(error)),
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(error)) => return Err(io_error("file (lock)")(error)),
    }
    if writable {
        recover(path)?;
        return Ok(None);
    }
    Ok(journal::read_undo(path).map_err(io_error("file (journal, read-only roll-back)"))?.map(Arc::new))
}

/// Opens an existing file, mapping failures to NotFound / NotHdf5 / Hdf5. A writer (`rw`)
/// takes the exclusive lock of [`LockedFile`]; a reader takes HDF5's shared lock, so that a
/// file this process is writing can be read in the same process (HDF5 shares the open file
/// and takes no second lock), while a file another process writes cannot. A lock held against
/// the open is an error, never a wait. (HDF5 refuses to share an open file between handles
/// with different locking flags; a reader that meets the writer's handle of this process
/// reopens with the writer's flags.)
pub(super) fn open_file(path: &Path, rw: bool) -> Result<LockedFile, EnsembleError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(EnsembleError::NotFound {
                path: path.to_owned(),
            })
        }
        Err(error) => {
            return Err(EnsembleError::Io {
                path: path.to_owned(),
                object: "file".into(),
                error,
            })
        }
    };
    if meta.is_dir() {
        return Err(invalid(
            path,
            "file",
            "is a directory, not an ensemble file",
        ));
    }
    if meta.len() == 0 {
        return Err(EnsembleError::NotHdf5 {
            path: path.to_owned(),
            detail: "the file is empty".into(),
        });
    }
    let lock = if rw {
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|error| EnsembleError::Io { path: path.to_owned(), object: "file (open)".into(), error })?;
        take_lock(path, &lock)?;
        recover(path)?;
        Some(lock)
    } else {
        None
    };
    // a killed writer's half-done flush, rolled back before a reader opens the file
    let undo = if rw || !journal::journal_path(path).exists() { None } else { reader_rollback(path)? };
    let journal = rw.then(|| Journal::new(path));
    let res = match &journal {
        Some(j) => open_with(path, Open::ReadWrite, &writer_fapl(path, j)?),
        None => match open_with(path, Open::Read, &reader_fapl(path, true, undo.as_ref())?) {
            // this process writes the file (HDF5 locking off, the lock is the writer's own):
            // HDF5 shares the open file with the reader once the flags agree
            Err(e) if e.to_string().contains("file locking flag values don't match") => {
                open_with(path, Open::Read, &reader_fapl(path, false, undo.as_ref())?)
            }
            other => other,
        },
    };
    let file = res.map_err(|e| {
        if e.contains_minor(MinorErrorCode::NotHdf5) || e.contains_minor(MinorErrorCode::Truncated)
        {
            EnsembleError::NotHdf5 {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        } else {
            let hint = if e.contains_minor(MinorErrorCode::CantLockFile)
                || e.contains_minor(MinorErrorCode::CantLock)
            {
                " (is another process writing it?)"
            } else {
                ""
            };
            EnsembleError::Hdf5 {
                path: path.to_owned(),
                object: "file (open)".into(),
                detail: format!("{e}{hint}"),
            }
        }
    })?;
    close_on_exec(path, &file)?;
    Ok(LockedFile { file, lock, journal })
}

pub(super) fn file_len(path: &Path) -> Result<u64, EnsembleError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|error| EnsembleError::Io {
            path: path.to_owned(),
            object: "file".into(),
            error,
        })
}

pub(super) fn check_schema_version(path: &Path, file: &File) -> Result<u32, EnsembleError> {
    let attr = file
        .attr("schema_version")
        .map_err(|e| missing_or_h5(path, file, "/", "schema_version", e))?;
    let found = attr
        .read_scalar::<u32>()
        .map_err(h5(path, "attribute /schema_version"))?;
    if found != SCHEMA_VERSION && found != REPLICA_SCHEMA_VERSION {
        return Err(EnsembleError::SchemaVersion {
            path: path.to_owned(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

pub(super) fn attr_object(obj: &str, name: &str) -> String {
    if obj.is_empty() || obj == "/" {
        format!("attribute /{name}")
    } else {
        format!("attribute {obj}/{name}")
    }
}

/// Classifies a failed attribute open: absent (Missing) or another HDF5 error.
pub(super) fn missing_or_h5(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    e: hdf5::Error,
) -> EnsembleError {
    let object = attr_object(obj, name);
    match loc.attr_names() {
        Ok(names) if !names.iter().any(|n| n == name) => missing(path, object),
        _ => h5(path, object)(e),
    }
}

pub(super) fn write_scalar_attr<T: H5Type>(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    value: &T,
) -> Result<(), EnsembleError> {
    loc.new_attr::<T>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(value))
        .map_err(h5(path, attr_object(obj, name)))
}

/// Writes a scalar variable-length UTF-8 string attribute (h5py reads it as `str`).
pub(super) fn write_str_attr(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
    value: &str,
) -> Result<(), EnsembleError> {
    let v = VarLenUnicode::from_str(value).map_err(|e| {
        invalid(
            path,
            attr_object(obj, name),
            format!("cannot be stored as an HDF5 string: {e}"),
        )
    })?;
    write_scalar_attr(path, loc, obj, name, &v)
}

/// Reads a scalar string attribute (variable-length UTF-8 or ASCII, as h5py writes them).
pub(super) fn read_str_attr(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<String, EnsembleError> {
    let object = attr_object(obj, name);
    let attr = loc
        .attr(name)
        .map_err(|e| missing_or_h5(path, loc, obj, name, e))?;
    let descr = attr
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5(path, object.clone()))?;
    match descr {
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<VarLenUnicode>()
            .map(|s| s.as_str().to_owned())
            .map_err(h5(path, object)),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<VarLenAscii>()
            .map(|s| s.as_str().to_owned())
            .map_err(h5(path, object)),
        other => Err(corrupt(
            path,
            object,
            format!("expected a variable-length string attribute, found type {other}"),
        )),
    }
}

pub(super) fn read_json_list(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<Vec<String>, EnsembleError> {
    let text = read_str_attr(path, loc, obj, name)?;
    serde_json::from_str(&text).map_err(|e| {
        corrupt(
            path,
            attr_object(obj, name),
            format!("expected a JSON array of strings: {e}"),
        )
    })
}

pub(super) fn json_list(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(super) fn read_u64_list(
    path: &Path,
    loc: &Location,
    obj: &str,
    name: &str,
) -> Result<Vec<u64>, EnsembleError> {
    let attr = loc
        .attr(name)
        .map_err(|e| missing_or_h5(path, loc, obj, name, e))?;
    let object = attr_object(obj, name);
    let shape = attr.get_shape().map_err(h5(path, object.clone()))?;
    if shape.len() != 1 || shape[0] > 64 {
        return Err(corrupt(
            path,
            object,
            format!("expected a short 1-D array, found shape {shape:?}"),
        ));
    }
    attr.read_raw::<u64>().map_err(h5(path, object))
}

/// Reads kind, index, params and columns of a step group.
pub(super) fn read_step_info(
    path: &Path,
    g: &Group,
    gpath: &str,
) -> Result<(String, usize, String, Vec<String>), EnsembleError> {
    let kind = read_str_attr(path, g, gpath, "kind")?;
    let index_attr = g
        .attr("index")
        .map_err(|e| missing_or_h5(path, g, gpath, "index", e))?;
    let index = index_attr
        .read_scalar::<u32>()
        .map_err(h5(path, attr_object(gpath, "index")))?;
    let params = read_str_attr(path, g, gpath, "params")?;
    let columns = read_json_list(path, g, gpath, "columns")?;
    Ok((kind, index as usize, params, columns))
}

pub(super) fn open_group(path: &Path, parent: &Group, name: &str) -> Result<Group, EnsembleError> {
    let full = join(&parent.name(), name);
    if !parent.link_exists(name) {
        return Err(missing(path, format!("group {full}")));
    }
    parent
        .group(name)
        .map_err(h5(path, format!("group {full}")))
}

pub(super) fn open_dataset(
    path: &Path,
    parent: &Group,
    ppath: &str,
    name: &str,
) -> Result<Dataset, EnsembleError> {
    let full = join(ppath, name);
    if !parent.link_exists(name) {
        return Err(missing(path, format!("dataset {full}")));
    }
    parent
        .dataset(name)
        .map_err(h5(path, format!("dataset {full}")))
}

pub(super) fn join(parent: &str, name: &str) -> String {
    format!("{}/{name}", parent.trim_end_matches('/'))
}

/// Creates an empty row dataset `[0]` or `[0, width]`, resizable along axis 0, with a
/// Fletcher32 checksum on every chunk (HDF5's built-in filter: h5py and every HDF5 reader
/// verify it without help, and a damaged chunk fails to read instead of giving wrong numbers).
pub(super) fn create_rows<T: H5Type>(
    path: &Path,
    parent: &Group,
    ppath: &str,
    name: &str,
    width: Option<usize>,
    max_rows: usize,
) -> Result<Dataset, EnsembleError> {
    let object = format!("dataset {}", join(ppath, name));
    let builder = parent.new_dataset::<T>().fletcher32();
    let res = match width {
        None => builder.chunk([max_rows]).shape([0..]).create(name),
        Some(w) => {
            let rows = (CHUNK_TARGET_ELEMS / w).clamp(1, max_rows);
            builder
                .chunk([rows, w.min(MAX_CHUNK_COLS)])
                .shape((0.., w))
                .create(name)
        }
    };
    res.map_err(h5(path, object))
}

/// Number of rows of a row dataset; `want_ndim` is the required rank (`None`: 1 or 2).
pub(super) fn rows_of(
    path: &Path,
    ds: &Dataset,
    object: &str,
    want_ndim: Option<usize>,
) -> Result<usize, EnsembleError> {
    let shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    let ok = match want_ndim {
        Some(d) => shape.len() == d,
        None => shape.len() == 1 || shape.len() == 2,
    };
    if !ok {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("unexpected shape {shape:?}"),
        ));
    }
    Ok(shape[0])
}

/// Row width: 1 for `[n]`, `len` for `[n, len]` (which must have `len >= 1`).
pub(super) fn row_width(path: &Path, ds: &Dataset, object: &str) -> Result<usize, EnsembleError> {
    let shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    match shape[..] {
        [_] => Ok(1),
        [_, w] if w >= 1 => Ok(w),
        _ => Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("unexpected shape {shape:?}"),
        )),
    }
}

/// Guards against allocating for a dataset whose size a damaged file misreports: our datasets
/// are never compressed, so their data cannot exceed the file size.
pub(super) fn check_size(
    path: &Path,
    object: &str,
    rows: usize,
    width: usize,
    elem: u64,
    file_len: u64,
) -> Result<(), EnsembleError> {
    let bytes = (rows as u64)
        .checked_mul(width as u64)
        .and_then(|x| x.checked_mul(elem));
    match bytes {
        Some(b) if b <= file_len => Ok(()),
        _ => Err(corrupt(
            path,
            format!("dataset {object}"),
            format!(
                "claims {rows} x {width} elements, more than the {file_len}-byte file can hold"
            ),
        )),
    }
}

/// Reads a whole row dataset (`elems` values, row-major) after a size sanity check.
pub(super) fn read_all<T: H5Type>(
    path: &Path,
    ds: &Dataset,
    object: &str,
    elems: usize,
    file_len: u64,
) -> Result<Vec<T>, EnsembleError> {
    check_size(
        path,
        object,
        elems,
        1,
        std::mem::size_of::<T>() as u64,
        file_len,
    )?;
    check_chunks(path, ds, object, file_len)?;
    let v = ds
        .read_raw::<T>()
        .map_err(h5(path, format!("dataset {object} (read)")))?;
    if v.len() != elems {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            format!("read {} values, expected {elems}", v.len()),
        ));
    }
    Ok(v)
}

/// Refuses a chunked dataset whose chunk index records a chunk that cannot be a checksummed
/// chunk of this file: shorter than its 4-byte Fletcher32 checksum, or reaching past the end
/// of the file. HDF5's Fletcher32 filter reads the checksum at `size − 4` without checking the
/// size, so a damaged index entry of a shorter chunk makes HDF5 read outside its buffer and
/// crash the process (found by fuzzing: `latflow analyze` died of SIGSEGV). The index itself
/// is checksummed, so walking it is safe. Contiguous datasets pass.
pub(super) fn check_chunks(path: &Path, ds: &Dataset, object: &str, file_len: u64) -> Result<(), EnsembleError> {
    if ds.chunk().is_none() {
        return Ok(());
    }
    let mut bad = None;
    ds.chunks_visit(|c| {
        let end = c.addr.checked_add(c.size);
        if c.size < 4 || end.is_none_or(|e| e > file_len) {
            bad = Some((c.offset.to_vec(), c.addr, c.size));
            return 1;
        }
        0
    })
    .map_err(h5(path, format!("dataset {object} (chunk index)")))?;
    match bad {
        Some((offset, addr, size)) => Err(invalid(
            path,
            format!("dataset {object}"),
            format!("the chunk at {offset:?} is recorded as {size} bytes at byte {addr} of a {file_len}-byte file: the chunk index is damaged"),
        )),
        None => Ok(()),
    }
}

/// Resizes a 1-D dataset to `start + data.len()` rows and writes `data` at `start`.
pub(super) fn append_1d<T: H5Type>(
    path: &Path,
    ds: &Dataset,
    object: &str,
    start: usize,
    data: &[T],
) -> Result<(), EnsembleError> {
    let end = start + data.len();
    ds.resize([end])
        .map_err(h5(path, format!("dataset {object} (resize)")))?;
    ds.write_slice(data, start..end)
        .map_err(h5(path, format!("dataset {object} (write)")))
}

/// Shrinks a row dataset to `rows` (keeping its width); errors if it holds fewer.
pub(super) fn truncate_rows(path: &Path, ds: &Dataset, object: &str, rows: u64) -> Result<(), EnsembleError> {
    let mut shape = ds
        .get_shape()
        .map_err(h5(path, format!("dataset {object}")))?;
    if shape.is_empty() {
        return Err(shape_err(
            path,
            format!("dataset {object}"),
            "scalar dataset, expected rows",
        ));
    }
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    if shape[0] < rows {
        return Err(mismatch(
            path,
            format!("dataset {object}"),
            format!(
                "has {} rows but the checkpoint records {rows}; the file is older than the \
                 checkpoint or was replaced",
                shape[0]
            ),
        ));
    }
    if shape[0] > rows {
        shape[0] = rows;
        ds.resize(shape)
            .map_err(h5(path, format!("dataset {object} (truncate)")))?;
    }
    Ok(())
}
