//! Loading, attaching and pinning the kernel programs for one scope.
//!
//! Maps are pinned by name under the scope's pin directory and reused when
//! they exist, so a restarted agent works on the same state the kernel
//! programs already use. Links are pinned too: enforcement outlives the
//! agent. A new agent attaches its own links next to the old ones (both run
//! the same policy from the same maps, so the overlap is safe) and only then
//! retires the old ones, so there is no instant without enforcement.

pub mod mounts;

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use gridward_common::programs;

use crate::paths::ScopePaths;

/// The eBPF object built from `ebpf/` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gridward.bpf.o"));

/// The kinds of cgroup program the object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sock,
    SockAddr,
    SkbIngress,
}

/// Every program and its kind.
const PROGRAMS: [(&str, Kind); 9] = [
    (programs::SOCK_CREATE, Kind::Sock),
    (programs::SOCK_RELEASE, Kind::Sock),
    (programs::POST_BIND4, Kind::Sock),
    (programs::POST_BIND6, Kind::Sock),
    (programs::CONNECT4, Kind::SockAddr),
    (programs::CONNECT6, Kind::SockAddr),
    (programs::SENDMSG4, Kind::SockAddr),
    (programs::SENDMSG6, Kind::SockAddr),
    (programs::INGRESS, Kind::SkbIngress),
];

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot create the pin directory {path}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "the kernel refused the eBPF object (pinned maps of an older layout under the scope's \
         pin directory are one cause; `gridward teardown` removes them)"
    )]
    Load { source: Box<EbpfError> },
    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the kernel refused program {name}")]
    Program { name: &'static str, source: Box<ProgramError> },
    #[error("the link of program {name} cannot be pinned")]
    Link { name: &'static str, source: Box<aya::programs::links::LinkError> },
    #[error("cannot open the scope cgroup {path}")]
    OpenScope { path: PathBuf, source: io::Error },
    #[error("cannot pin the link of {name} at {path}")]
    PinLink { name: &'static str, path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("cannot remove pins under {path}")]
    Teardown { path: PathBuf, source: io::Error },
}

/// Loads the programs, creating or reusing the scope's pinned maps.
pub fn load(paths: &ScopePaths) -> Result<Ebpf, LoaderError> {
    let map_dir = paths.map_pins();
    std::fs::create_dir_all(&map_dir)
        .map_err(|source| LoaderError::PinDir { path: map_dir.clone(), source })?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&map_dir)
        .load(OBJECT)
        .map_err(|source| LoaderError::Load { source: Box::new(source) })?;
    for (name, kind) in PROGRAMS {
        load_program(&mut ebpf, name, kind)?;
    }
    Ok(ebpf)
}

fn load_program(ebpf: &mut Ebpf, name: &'static str, kind: Kind) -> Result<(), LoaderError> {
    let program = ebpf.program_mut(name).ok_or(LoaderError::MissingProgram { name })?;
    let refused = |source: ProgramError| LoaderError::Program { name, source: Box::new(source) };
    match kind {
        Kind::SockAddr => {
            let program: &mut CgroupSockAddr = program.try_into().map_err(refused)?;
            program.load().map_err(refused)
        }
        Kind::Sock => {
            let program: &mut CgroupSock = program.try_into().map_err(refused)?;
            program.load().map_err(refused)
        }
        Kind::SkbIngress => {
            let program: &mut CgroupSkb = program.try_into().map_err(refused)?;
            program.load().map_err(refused)
        }
    }
}

/// Attaches every program at the scope cgroup, pins the new links, then
/// retires the links an earlier agent left. Returns how many it retired.
pub fn attach(ebpf: &mut Ebpf, scope_dir: &Path, paths: &ScopePaths) -> Result<usize, LoaderError> {
    let link_dir = paths.link_pins();
    std::fs::create_dir_all(&link_dir)
        .map_err(|source| LoaderError::PinDir { path: link_dir.clone(), source })?;
    let earlier = pinned_links(&link_dir);
    let cgroup = File::open(scope_dir)
        .map_err(|source| LoaderError::OpenScope { path: scope_dir.to_owned(), source })?;
    let stamp = unique_stamp();
    for (name, kind) in PROGRAMS {
        let link = attach_program(ebpf, name, kind, &cgroup)?;
        // bpffs refuses names with a dot.
        let path = link_dir.join(format!("{name}-{stamp}"));
        link.pin(&path).map_err(|source| LoaderError::PinLink {
            name,
            path: path.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(retire(earlier))
}

fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
    cgroup: &File,
) -> Result<FdLink, LoaderError> {
    let program = ebpf.program_mut(name).ok_or(LoaderError::MissingProgram { name })?;
    let refused = |source: ProgramError| LoaderError::Program { name, source: Box::new(source) };
    let unpinnable = |source| LoaderError::Link { name, source: Box::new(source) };
    // cgroup links always run alongside other attachments (our own during a
    // handover, other tools' programs); the kernel refuses explicit flags.
    let mode = CgroupAttachMode::Single;
    match kind {
        Kind::SockAddr => {
            let program: &mut CgroupSockAddr = program.try_into().map_err(refused)?;
            let id = program.attach(cgroup, mode).map_err(refused)?;
            FdLink::try_from(program.take_link(id).map_err(refused)?).map_err(unpinnable)
        }
        Kind::Sock => {
            let program: &mut CgroupSock = program.try_into().map_err(refused)?;
            let id = program.attach(cgroup, mode).map_err(refused)?;
            FdLink::try_from(program.take_link(id).map_err(refused)?).map_err(unpinnable)
        }
        Kind::SkbIngress => {
            let program: &mut CgroupSkb = program.try_into().map_err(refused)?;
            let id = program.attach(cgroup, CgroupSkbAttachType::Ingress, mode).map_err(refused)?;
            FdLink::try_from(program.take_link(id).map_err(refused)?).map_err(unpinnable)
        }
    }
}

fn pinned_links(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(Result::ok).map(|entry| entry.path()).collect()
}

/// Unpins and closes old links; the kernel detaches each once no one holds it.
fn retire(links: Vec<PathBuf>) -> usize {
    let mut retired = 0;
    for path in links {
        match PinnedLink::from_pin(&path).map(PinnedLink::unpin) {
            Ok(Ok(_link)) => retired += 1,
            Ok(Err(error)) => tracing::warn!(path = %path.display(), %error, "cannot unpin link"),
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot open link"),
        }
    }
    retired
}

/// Removes every pin of the scope: links first (enforcement stops), then maps.
pub fn teardown(paths: &ScopePaths) -> Result<bool, LoaderError> {
    if !paths.pins.exists() {
        return Ok(false);
    }
    retire(pinned_links(&paths.link_pins()));
    std::fs::remove_dir_all(&paths.pins)
        .map_err(|source| LoaderError::Teardown { path: paths.pins.clone(), source })?;
    Ok(true)
}

fn unique_stamp() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", std::process::id())
}
