//! Loads onto a device, through the host-memory device that stands in for
//! a GPU: every backend's reads land in the registered staging ring and
//! every tensor arrives byte for byte as the reference `safetensors` reads
//! it, with copies slowed down so that slots are reused only after their
//! copies completed (the device counts any use of memory a copy is still
//! reading or writing as a violation). Failures name their tensor, and
//! nothing hangs or leaks.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use weightlift::device::{
    Allocate, Carve, Destination, Destinations, DeviceLoad, Loaded, Place, Staging,
};
use weightlift::{Error, LoadOptions, StagingOptions};
use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{Device, DeviceMemory, HostDevice, HostMemory};
use weightlift_io::{Backend, EngineOptions};
use weightlift_plan::Selection;
use weightlift_tests::fixtures::assert_same_as_reference;

fn go() -> bool {
    true
}

/// A checkpoint of two shards with tensors of awkward sizes.
fn fixture(tag: &str) -> (Scratch, Arc<Checkpoint>) {
    let dir = scratch(tag);
    let sizes: Vec<u64> = (0..60)
        .map(|i| [0, 1, 7, 4096, 70_001, 300_000][i % 6])
        .collect();
    write_shard(&dir.0.join("a.safetensors"), "a", &sizes, 1);
    write_shard(&dir.0.join("b.safetensors"), "b", &sizes[..13], 2);
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    (dir, Arc::new(ckpt))
}

/// Staging of `slots` slots of `slot` bytes.
fn staging(device: &Arc<HostDevice>, slot: usize, slots: usize) -> Staging<Arc<HostDevice>> {
    let options = StagingOptions {
        pinned_bytes: slot * slots,
        fill_threads: 2,
        streams: 3,
    };
    assert_eq!(options.slot_size(), slot);
    Staging::new(device.clone(), options).unwrap()
}

fn options(backend: Backend) -> LoadOptions {
    with_engine(only(backend, &EngineOptions::default()))
}

/// Run a load to the end; the tensors by id, each once.
fn collect<T: Destinations>(
    load: &mut DeviceLoad<Arc<HostDevice>, T>,
) -> Result<HashMap<TensorId, T::Owner>, Error> {
    let mut out = HashMap::new();
    while let Some(batch) = load.next(&mut go)? {
        for Loaded { id, owner } in batch {
            assert!(out.insert(id, owner).is_none(), "{id:?} handed out twice");
        }
    }
    Ok(out)
}

/// The error of a load that must fail.
fn failure<T>(result: Result<T, Error>) -> Error {
    match result {
        Ok(_) => panic!("the load succeeded where it must fail"),
        Err(e) => e,
    }
}

fn usable_backends(ckpt: &Checkpoint) -> Vec<Backend> {
    let paths: Vec<_> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    engine_backends().filter(|&b| usable(b, &paths)).collect()
}

#[test]
fn every_backend_lands_every_byte_through_the_staging_ring() {
    let (_dir, ckpt) = fixture("device-parity");
    // Copies on three streams, each slower than the last, so that they
    // complete out of order and slots wait for them.
    let device = Arc::new(HostDevice::new().with_stream_delays(&[
        Duration::from_micros(50),
        Duration::from_micros(400),
        Duration::ZERO,
    ]));
    let mut stage = Some(staging(&device, 64 << 10, 4));
    for backend in usable_backends(&ckpt) {
        // One staging serves every load: it is handed back each time.
        let mut load = DeviceLoad::start(
            stage.take().unwrap(),
            ckpt.clone(),
            &Selection::All,
            Allocate(device.clone()),
            &options(backend),
        )
        .unwrap();
        assert!(
            load.describe().contains(backend.name()),
            "{}",
            load.describe()
        );
        let got = collect(&mut load).unwrap_or_else(|e| panic!("{backend}: {}", chain(&e)));
        assert!(load.is_done());
        assert_eq!(got.len(), ckpt.len(), "{backend}");
        assert_same_as_reference(&ckpt, (0..ckpt.len()).map(|i| TensorId(i as u32)), |id| {
            Some(got[&id].bytes())
        });
        stage = Some(load.into_staging());
    }
    drop(stage);
    assert_eq!(device.violations(), 0);
}

#[test]
fn a_selection_loads_only_its_tensors() {
    let (_dir, ckpt) = fixture("device-select");
    let device = Arc::new(HostDevice::new());
    let names: Vec<String> = ckpt
        .tensors()
        .iter()
        .step_by(5)
        .map(|t| t.name.clone())
        .collect();
    let mut load = DeviceLoad::start(
        staging(&device, 16 << 10, 4),
        ckpt.clone(),
        &Selection::names(names.clone()),
        Allocate(device.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let got = collect(&mut load).unwrap();
    let ids: Vec<TensorId> = names.iter().map(|n| ckpt.id(n).unwrap()).collect();
    assert_eq!(got.len(), ids.len());
    assert_same_as_reference(&ckpt, ids, |id| Some(got[&id].bytes()));
    drop(load);
    assert_eq!(device.violations(), 0);
}

/// Destinations carved from one buffer of host memory (as `copy=False`
/// does on a GPU), giving a region back when the test moves past its
/// tensor; each tensor's bytes are checked before that.
struct Carved {
    /// The buffer's address: the test keeps the buffer past every load.
    buffer: u64,
    carve: Rc<RefCell<Carve>>,
    device: Arc<HostDevice>,
}

/// A region of the buffer, or memory of its own.
enum Held {
    At(u64),
    Own(HostMemory),
}

// SAFETY: regions of the buffer (which the test keeps past every load) are
// handed out once each until given back; memory of its own is owned by its
// `Held`.
unsafe impl Destinations for Carved {
    type Owner = Held;

    fn destination(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<Held>>, Error> {
        let len = ckpt.tensor(id).len();
        let place = self.carve.borrow_mut().place(len);
        Ok(match place {
            Place::At(start) => Some(Destination {
                ptr: self.buffer + start,
                len,
                owner: Held::At(start),
            }),
            Place::Own => {
                let memory = self.device.alloc(len as usize)?;
                Some(Destination {
                    ptr: memory.device_ptr(),
                    len,
                    owner: Held::Own(memory),
                })
            }
            Place::Full => None,
        })
    }
}

#[test]
fn a_reused_buffer_waits_for_room_and_every_tensor_still_arrives_whole() {
    let (_dir, ckpt) = fixture("device-carve");
    let plain = plain_bytes(&ckpt);
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_micros(100)));
    // Room for two of the largest tensors at once.
    let size = 2 * 300_000 + 512;
    let memory = device.alloc(size).unwrap();
    let buffer = memory.device_ptr();
    let carve = Rc::new(RefCell::new(Carve::new(size as u64)));
    let carved = Carved {
        buffer,
        carve: carve.clone(),
        device: device.clone(),
    };
    let mut load = DeviceLoad::start(
        staging(&device, 64 << 10, 4),
        ckpt.clone(),
        &Selection::All,
        carved,
        &LoadOptions::default(),
    )
    .unwrap();
    let mut seen = 0;
    while let Some(batch) = load.next(&mut go).unwrap() {
        let mut give_back = Vec::new();
        for Loaded { id, owner } in batch {
            let t = ckpt.tensor(id);
            let bytes: Vec<u8> = match &owner {
                // SAFETY: the region holds the tensor, and nothing writes it
                // until it is given back below.
                Held::At(start) => unsafe {
                    std::slice::from_raw_parts((buffer + start) as *const u8, t.len() as usize)
                }
                .to_vec(),
                Held::Own(m) => m.bytes().to_vec(),
            };
            assert!(bytes == plain[&t.name], "{}", t.name);
            if let Held::At(start) = owner {
                give_back.push(start);
            }
            seen += 1;
        }
        // The caller moved past them: their regions may be reused.
        for start in give_back {
            carve.borrow_mut().give_back(start);
        }
    }
    assert_eq!(seen, ckpt.len());
    drop(load);
    drop(memory);
    assert_eq!(device.violations(), 0);
}

/// Never any room.
struct NoRoom;

// SAFETY: it hands out no memory at all.
unsafe impl Destinations for NoRoom {
    type Owner = ();

    fn destination(
        &mut self,
        _: &Checkpoint,
        _: TensorId,
    ) -> Result<Option<Destination<()>>, Error> {
        Ok(None)
    }
}

/// Destinations one byte short.
struct Short(Arc<HostDevice>);

// SAFETY: the memory is the owner.
unsafe impl Destinations for Short {
    type Owner = HostMemory;

    fn destination(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<HostMemory>>, Error> {
        let len = ckpt.tensor(id).len().saturating_sub(1);
        let memory = self.0.alloc(len as usize)?;
        Ok(Some(Destination {
            ptr: memory.device_ptr(),
            len,
            owner: memory,
        }))
    }
}

#[test]
fn destinations_that_do_not_fit_are_errors_naming_the_tensor() {
    let (_dir, ckpt) = fixture("device-dests");
    let device = Arc::new(HostDevice::new());
    let mut load = DeviceLoad::start(
        staging(&device, 16 << 10, 4),
        ckpt.clone(),
        &Selection::names(["a4"]),
        NoRoom,
        &LoadOptions::default(),
    )
    .unwrap();
    let e = failure(collect(&mut load));
    assert_eq!(e.tensor(), Some("a4"), "{}", chain(&e));
    assert!(
        matches!(e.innermost(), Error::NoRoom { len: 70_001 }),
        "{e:?}"
    );
    // A failed load hands out nothing more.
    assert!(load.next(&mut go).unwrap().is_none());
    drop(load);

    let mut load = DeviceLoad::start(
        staging(&device, 16 << 10, 4),
        ckpt.clone(),
        &Selection::names(["a3"]),
        Short(device.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let e = failure(collect(&mut load));
    assert_eq!(e.tensor(), Some("a3"));
    assert!(
        matches!(
            e.innermost(),
            Error::Destination {
                expected: 4096,
                given: 4095
            }
        ),
        "{e:?}"
    );
    drop(load);
    assert_eq!(device.violations(), 0);
}

#[test]
fn a_failed_copy_is_an_error_naming_a_tensor_and_nothing_is_left_in_flight() {
    let (_dir, ckpt) = fixture("device-fail");
    for n in [1, 5, 40] {
        let device = Arc::new(
            HostDevice::new()
                .with_copy_delay(Duration::from_micros(200))
                .with_failing_copy(n),
        );
        let mut load = DeviceLoad::start(
            staging(&device, 64 << 10, 4),
            ckpt.clone(),
            &Selection::All,
            Allocate(device.clone()),
            &LoadOptions::default(),
        )
        .unwrap();
        let e = failure(collect(&mut load));
        let tensor = e
            .tensor()
            .unwrap_or_else(|| panic!("no tensor in {}", chain(&e)));
        assert!(ckpt.find(tensor).is_some(), "{tensor}");
        assert!(matches!(e.innermost(), Error::Device(_)), "{e:?}");
        drop(load);
        assert_eq!(device.violations(), 0, "copy {n}");
    }
}

#[test]
fn dropping_a_load_half_way_waits_for_its_copies() {
    let (_dir, ckpt) = fixture("device-drop");
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_millis(2)));
    for stop_after in [0, 1, 7] {
        let mut load = DeviceLoad::start(
            staging(&device, 16 << 10, 4),
            ckpt.clone(),
            &Selection::All,
            Allocate(device.clone()),
            &LoadOptions::default(),
        )
        .unwrap();
        let mut kept = Vec::new();
        for _ in 0..stop_after {
            if let Some(batch) = load.next(&mut go).unwrap() {
                kept.extend(batch);
            }
        }
        drop(load);
        // What was handed out stays valid and right.
        assert_same_as_reference(&ckpt, kept.iter().map(|l| l.id), |id| {
            kept.iter().find(|l| l.id == id).map(|l| l.owner.bytes())
        });
    }
    assert_eq!(device.violations(), 0);
}

#[test]
fn a_cancelled_wait_stops_the_load() {
    let (_dir, ckpt) = fixture("device-cancel");
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_millis(1)));
    let mut load = DeviceLoad::start(
        staging(&device, 16 << 10, 4),
        ckpt.clone(),
        &Selection::All,
        Allocate(device.clone()),
        &options(Backend::PreadBuffered),
    )
    .unwrap();
    let mut no = || false;
    // Either batches keep coming (the wait is asked only while reads are
    // behind) or the load is cancelled; it never hangs.
    let mut cancelled = false;
    for _ in 0..10_000 {
        match load.next(&mut no) {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(Error::Cancelled) => {
                cancelled = true;
                break;
            }
            Err(e) => panic!("{}", chain(&e)),
        }
    }
    let _ = cancelled;
    drop(load);
    assert_eq!(device.violations(), 0);
}

#[test]
fn a_file_truncated_during_a_load_is_an_error_naming_file_and_tensor() {
    let (dir, ckpt) = fixture("device-truncated");
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_millis(1)));
    let path = dir.0.join("a.safetensors");
    for backend in usable_backends(&ckpt) {
        let (_d, ckpt) = fixture(&format!("device-truncated-{backend}"));
        let path = ckpt.shards()[0].path().to_path_buf();
        let mut load = DeviceLoad::start(
            staging(&device, 16 << 10, 4),
            ckpt.clone(),
            &Selection::All,
            Allocate(device.clone()),
            &options(backend),
        )
        .unwrap();
        // The header was read and the reads started: now the file loses
        // most of its data.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(ckpt.shards()[0].data_start() + 5000)
            .unwrap();
        let e = failure(collect(&mut load));
        assert!(
            chain(&e).contains("a.safetensors"),
            "{backend}: {}",
            chain(&e)
        );
        assert!(e.tensor().is_some(), "{backend}: {}", chain(&e));
        drop(load);
    }
    let _ = path;
    assert_eq!(device.violations(), 0);
}

#[test]
fn many_tiny_tensors_cost_few_launches() {
    let dir = scratch("device-tiny");
    let sizes: Vec<u64> = (0..20_000).map(|i| i % 7).collect();
    let path = dir.0.join("tiny.safetensors");
    write_shard(&path, "t", &sizes, 9);
    let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
    let device = Arc::new(HostDevice::new());
    let mut load = DeviceLoad::start(
        staging(&device, 1 << 20, 4),
        ckpt.clone(),
        &Selection::All,
        Allocate(device.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let got = collect(&mut load).unwrap();
    assert_eq!(got.len(), 20_000);
    assert_same_as_reference(&ckpt, got.keys().copied(), |id| Some(got[&id].bytes()));
    // One copy per non-empty tensor, not one synchronization per tensor:
    // the 60 KB of data fit in one extent, so one event.
    let nonempty = sizes.iter().filter(|&&n| n > 0).count() as u64;
    assert_eq!(device.copies(), nonempty);
    drop(load);
    assert_eq!(device.violations(), 0);
}

#[test]
fn one_tensor_uploads_alone_through_the_staging() {
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_micros(100)));
    let mut stage = staging(&device, 16 << 10, 4);
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dst = device.alloc(bytes.len()).unwrap();
    stage.upload(&bytes, &dst).unwrap();
    assert!(dst.bytes() == bytes.as_slice());
    drop(stage);
    assert_eq!(device.violations(), 0);
}

#[test]
fn a_read_error_while_tensors_wait_for_room_ends_the_load() {
    // Three tensors of 200,000 bytes through a reused buffer that holds one
    // at a time, in 64 KiB slots; the second read fails. Tensors after it
    // may have landed and wait for room that only the failed one's
    // completion could make: the load must end with the read error, not
    // wait for it forever.
    for trial in 0..40 {
        let dir = scratch(&format!("device-fail-room-{trial}"));
        let path = dir.0.join("a.safetensors");
        write_shard(&path, "t", &[200_000, 200_000, 200_000], trial);
        let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
        let device = Arc::new(HostDevice::new());
        let memory = device.alloc(200_064).unwrap();
        let carve = Rc::new(RefCell::new(Carve::new(200_064)));
        let carved = Carved {
            buffer: memory.device_ptr(),
            carve: carve.clone(),
            device: device.clone(),
        };
        let mut options = options(Backend::PreadBuffered);
        options.engine.fault = Some(weightlift_io::InjectedFault {
            file: 0,
            nth: 1,
            errno: libc::EIO,
        });
        let mut load = DeviceLoad::start(
            staging(&device, 64 << 10, 4),
            ckpt.clone(),
            &Selection::All,
            carved,
            &options,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let mut give_up = || started.elapsed() < Duration::from_secs(20);
        let e = loop {
            match load.next(&mut give_up) {
                Ok(Some(batch)) => {
                    for l in batch {
                        if let Held::At(start) = l.owner {
                            carve.borrow_mut().give_back(start);
                        }
                    }
                }
                Ok(None) => panic!("trial {trial}: the load ended without its read error"),
                Err(e) => break e,
            }
        };
        assert!(
            !matches!(e, Error::Cancelled),
            "trial {trial}: no error within 20 s (a hang)"
        );
        assert!(
            chain(&e).contains("Input/output error"),
            "trial {trial}: {}",
            chain(&e)
        );
        drop(load);
        drop(memory);
        assert_eq!(device.violations(), 0);
    }
}

#[test]
fn polling_without_waiting_does_not_wait_for_copies() {
    let (_dir, ckpt) = fixture("device-poll");
    // Copies of a quarter of a second: polling with no timeout must come
    // back with nothing rather than wait for one.
    let device = Arc::new(HostDevice::new().with_copy_delay(Duration::from_millis(250)));
    let mut load = DeviceLoad::start(
        staging(&device, 64 << 10, 4),
        ckpt.clone(),
        &Selection::names(["a5"]),
        Allocate(device.clone()),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut pending = 0;
    let mut got = None;
    while got.is_none() {
        let t = std::time::Instant::now();
        match load.poll_next(Duration::ZERO) {
            std::task::Poll::Pending => pending += 1,
            std::task::Poll::Ready(r) => got = Some(r.unwrap()),
        }
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "a poll without a timeout waited {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(pending > 0);
    drop(load);
    assert_eq!(device.violations(), 0);
}
