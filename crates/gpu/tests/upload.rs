//! The upload pipeline on the host-memory device: every byte arrives, no
//! tensor comes back before its copies completed, slots are reused only
//! after their copies, errors name the tensor, and dropping mid-flight
//! frees everything after the copies finish. The device counts every use
//! of memory while a copy on it is in flight; each test ends by checking
//! that there was none.

use std::time::Duration;

use weightlift_gpu::{
    Device, DeviceMemory, Error, HostDevice, HostMemory, UploadOptions, Uploaded, Uploader,
};

/// Deterministic bytes, different per tensor.
fn bytes(id: usize, len: usize) -> Vec<u8> {
    let mut x = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Copies made for `sizes` packed back to back into slots of `slot`
/// bytes: a tensor is cut where a slot ends.
fn pieces(sizes: &[usize], slot: usize) -> u64 {
    let mut filled = 0;
    let mut n = 0;
    for &len in sizes {
        let mut left = len;
        while left > 0 {
            if filled == slot {
                filled = 0;
            }
            let k = left.min(slot - filled);
            filled += k;
            left -= k;
            n += 1;
        }
    }
    n
}

fn opts(slot_size: usize, slots: usize, streams: usize) -> UploadOptions {
    UploadOptions {
        slot_size,
        slots,
        streams,
        fill_threads: 1,
    }
}

/// Upload `sizes`, polling as it goes, and check every tensor's bytes the
/// moment it is handed back.
fn upload_all(device: &HostDevice, o: UploadOptions, sizes: &[usize]) -> Vec<Uploaded<HostMemory>> {
    let mut up = Uploader::new(device, o).unwrap();
    let mut got = Vec::new();
    let check = |u: &Uploaded<HostMemory>| {
        assert_eq!(
            u.memory.bytes(),
            &bytes(u.id, sizes[u.id])[..],
            "tensor {} handed back with the wrong bytes",
            u.id
        );
    };
    for (id, &len) in sizes.iter().enumerate() {
        up.upload(id, &format!("t{id}"), &bytes(id, len)).unwrap();
        for u in up.poll().unwrap() {
            check(&u);
            got.push(u);
        }
    }
    for u in up.finish().unwrap() {
        check(&u);
        got.push(u);
    }
    assert_eq!(device.violations(), 0);
    got
}

/// After the pipeline is gone: nothing was used while a copy was in flight,
/// and every byte of device memory was freed (once `kept` is dropped).
fn assert_clean(device: &HostDevice) {
    assert_eq!(
        device.violations(),
        0,
        "memory used or freed with a copy in flight"
    );
    assert_eq!(device.used(), 0, "device memory left allocated");
}

#[test]
fn every_byte_arrives() {
    let device = HostDevice::new();
    // Empty, tiny, exactly a slot, just over, many slots.
    let sizes = [0, 1, 7, 4096, 4097, 12_288, 100_000, 1, 0, 65_536];
    let got = upload_all(&device, opts(4096, 3, 2), &sizes);
    let mut ids: Vec<usize> = got.iter().map(|u| u.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..sizes.len()).collect::<Vec<_>>());
    for u in &got {
        assert_eq!(u.memory.len(), sizes[u.id]);
    }
    drop(got);
    assert_clean(&device);
}

#[test]
fn slots_are_reused_only_after_their_copies() {
    // One slot, slow copies: every chunk must wait for the previous copy,
    // or the slot would be overwritten under it and the bytes would differ.
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(2));
    let sizes: Vec<usize> = (0..12).map(|i| 1000 + 700 * i).collect();
    upload_all(&device, opts(1024, 1, 3), &sizes);
    assert_eq!(device.copies(), pieces(&sizes, 1024));
    assert_clean(&device);
}

#[test]
fn the_oldest_slot_is_waited_for_when_streams_finish_out_of_order() {
    // Stream 0 is slow, stream 1 fast; tensors alternate between them. With
    // two slots, the third tensor must wait for the first (slow) copy, not
    // for the second (fast) one, before refilling the first slot.
    let device = HostDevice::new().with_stream_delays(&[Duration::from_millis(30), Duration::ZERO]);
    let sizes = vec![3000; 8];
    upload_all(&device, opts(4096, 2, 2), &sizes);
    assert_clean(&device);
}

#[test]
fn many_tiny_tensors() {
    let device = HostDevice::new();
    let sizes: Vec<usize> = (0..20_000).map(|i| i % 17).collect();
    let got = upload_all(&device, opts(64 << 10, 4, 4), &sizes);
    assert_eq!(got.len(), sizes.len());
    drop(got);
    assert_clean(&device);
}

#[test]
fn nothing_comes_back_before_its_copies_complete() {
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(300));
    let mut up = Uploader::new(&device, opts(1024, 4, 1)).unwrap();
    up.upload(0, "slow", &bytes(0, 3000)).unwrap();
    // Each copy sleeps 300 ms before it runs: right now none can be done.
    assert!(up.poll().unwrap().is_empty());
    assert_eq!(up.in_flight(), 1);
    let done = up.finish().unwrap();
    assert_eq!(done[0].memory.bytes(), &bytes(0, 3000)[..]);
    drop(done);
    assert_clean(&device);
}

#[test]
fn staging_stays_within_its_bound() {
    let device = HostDevice::new();
    let mut up = Uploader::new(&device, opts(4096, 3, 2)).unwrap();
    up.upload(0, "small", &bytes(0, 10)).unwrap();
    assert_eq!(up.staging_bytes(), 4096, "slots are allocated as needed");
    up.upload(1, "big", &bytes(1, 1 << 20)).unwrap();
    assert_eq!(up.staging_bytes(), 3 * 4096);
    drop(up);
    assert_clean(&device);
}

#[test]
fn out_of_memory_names_the_tensor_and_leaves_the_device_usable() {
    let device = HostDevice::new().with_capacity(10_000);
    let mut up = Uploader::new(&device, opts(4096, 2, 2)).unwrap();
    up.upload(0, "fits", &bytes(0, 6000)).unwrap();
    let err = up.upload(1, "too.big", &bytes(1, 6000)).unwrap_err();
    match &err {
        Error::Upload { tensor, source } => {
            assert_eq!(tensor, "too.big");
            assert!(
                matches!(
                    **source,
                    Error::OutOfMemory {
                        requested: 6000,
                        free: Some(4000),
                        ..
                    }
                ),
                "{source:?}"
            );
        }
        other => panic!("expected an upload error, got {other:?}"),
    }
    assert!(err.to_string().contains("too.big"), "{err}");
    // What fit is still delivered whole.
    let done = up.finish().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].memory.bytes(), &bytes(0, 6000)[..]);
    drop(done);
    assert_eq!(device.used(), 0, "everything is freed");
    // The device takes the next load.
    upload_all(&device, opts(4096, 2, 2), &[9000]);
    assert_clean(&device);
}

#[test]
fn a_failed_copy_names_its_tensor_and_nothing_leaks() {
    // Copy 3 fails: tensors 0 and 1 fill a slot each, tensor 2 two.
    let device = HostDevice::new()
        .with_copy_delay(Duration::from_millis(1))
        .with_failing_copy(3);
    let mut up = Uploader::new(&device, opts(1024, 2, 1)).unwrap();
    let mut failure = None;
    for (id, len) in [1024, 1024, 2048, 1024, 1024].into_iter().enumerate() {
        if let Err(e) = up.upload(id, &format!("layer.{id}"), &bytes(id, len)) {
            failure = Some(e);
            break;
        }
    }
    let err = match failure {
        Some(e) => {
            drop(up);
            e
        }
        None => up.finish().map(|_| ()).unwrap_err(),
    };
    let Error::Upload { tensor, source } = &err else {
        panic!("expected an upload error, got {err:?}");
    };
    // Copy 3 is tensor 2's second chunk: the error names tensor 2, even
    // when a later upload is the one that notices.
    assert_eq!(tensor, "layer.2", "{err}");
    assert!(matches!(**source, Error::Copy { .. }), "{source:?}");
    assert_clean(&device);
}

#[test]
fn dropping_mid_flight_waits_then_frees() {
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(5));
    let mut up = Uploader::new(&device, opts(2048, 2, 2)).unwrap();
    for id in 0..6 {
        up.upload(id, "t", &bytes(id, 3000)).unwrap();
    }
    up.flush().unwrap();
    assert!(device.used() > 0);
    drop(up);
    // Every queued copy ran before the slots and memory went away.
    assert_eq!(device.copies(), pieces(&[3000; 6], 2048));
    assert_clean(&device);
}

#[test]
fn zero_settings_are_refused() {
    let device = HostDevice::new();
    for (o, name) in [
        (opts(0, 1, 1), "slot_size"),
        (opts(1, 0, 1), "slots"),
        (opts(1, 1, 0), "streams"),
        (
            UploadOptions {
                fill_threads: 0,
                ..opts(1, 1, 1)
            },
            "fill_threads",
        ),
    ] {
        match Uploader::new(&device, o) {
            Err(Error::Setting { name: n, .. }) => assert_eq!(n, name),
            Err(e) => panic!("{name}: unexpected {e:?}"),
            Ok(_) => panic!("{name} = 0 accepted"),
        }
    }
}

#[test]
fn the_device_checks_copy_ranges() {
    let device = HostDevice::new();
    let stream = device.stream().unwrap();
    let dst = device.alloc(10).unwrap();
    let src = device.alloc_pinned(10).unwrap();
    // SAFETY: the copy is refused before anything is queued.
    let r = unsafe { device.copy_to_device(&stream, &dst, 5, &src, 0, 6) };
    assert!(matches!(r, Err(Error::Copy { .. })), "{r:?}");
    // SAFETY: as above.
    let r = unsafe { device.copy_to_device(&stream, &dst, 0, &src, usize::MAX, 2) };
    assert!(matches!(r, Err(Error::Copy { .. })), "{r:?}");
}

#[test]
fn a_failure_does_not_swallow_tensors_that_completed() {
    // Two streams, a slot per tensor; copy 1 (tensor 1, on stream 1)
    // fails, tensors 0 and 2 (stream 0) complete.
    let device = HostDevice::new().with_failing_copy(1);
    let mut up = Uploader::new(&device, opts(4096, 4, 2)).unwrap();
    for id in 0..3 {
        up.upload(id, &format!("t{id}"), &bytes(id, 4096)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut delivered = Vec::new();
    let err = loop {
        match up.poll() {
            Ok(done) => delivered.extend(done.into_iter().map(|u| {
                assert_eq!(u.memory.bytes(), &bytes(u.id, 4096)[..]);
                u.id
            })),
            Err(e) => break e,
        }
    };
    delivered.sort_unstable();
    assert_eq!(delivered, [0, 2], "the completed tensors are handed back");
    assert!(
        matches!(&err, Error::Upload { tensor, .. } if tensor == "t1"),
        "{err:?}"
    );
    drop(up);
    assert_clean(&device);
}

#[test]
fn tensors_share_a_slot_while_its_earlier_copies_are_in_flight() {
    // Slow copies, a flush after each small tensor: each is launched from
    // the same slot while the copies before it still read that slot. The
    // device counts any write to a range a copy is reading.
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(3));
    let mut up = Uploader::new(&device, opts(4096, 2, 2)).unwrap();
    let sizes: Vec<usize> = (0..40).map(|i| 50 + 13 * i).collect();
    let mut got = Vec::new();
    for (id, &len) in sizes.iter().enumerate() {
        up.upload(id, "t", &bytes(id, len)).unwrap();
        up.flush().unwrap();
        got.extend(up.poll().unwrap());
    }
    got.extend(up.finish().unwrap());
    assert_eq!(got.len(), sizes.len());
    for u in &got {
        assert_eq!(u.memory.bytes(), &bytes(u.id, sizes[u.id])[..]);
    }
    assert_eq!(device.copies(), pieces(&sizes, 4096));
    drop(got);
    drop(up);
    assert_clean(&device);
}

#[test]
fn staged_tensors_complete_after_a_flush() {
    let device = HostDevice::new();
    let mut up = Uploader::new(&device, opts(1 << 20, 2, 1)).unwrap();
    for id in 0..5 {
        up.upload(id, "t", &bytes(id, 1000)).unwrap();
    }
    // Nothing is queued until the slot fills or is flushed.
    std::thread::sleep(Duration::from_millis(20));
    assert!(up.poll().unwrap().is_empty());
    assert_eq!(device.copies(), 0);
    up.flush().unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(up.poll().unwrap());
        std::thread::yield_now();
    }
    assert_eq!(device.copies(), 5, "one copy per tensor");
    for u in &got {
        assert_eq!(u.memory.bytes(), &bytes(u.id, 1000)[..]);
    }
}

#[test]
fn memory_the_caller_owns_is_filled_and_never_freed() {
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(1));
    let sizes = [0usize, 1, 4095, 4096, 10_000];
    let mut dests: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xAA; n]).collect();
    {
        let mut up = Uploader::new(&device, opts(4096, 2, 2)).unwrap();
        for (id, d) in dests.iter_mut().enumerate() {
            // SAFETY: `dests` outlives the uploader, and nothing touches it
            // until the uploader is dropped.
            let memory = unsafe { device.borrow(d.as_mut_ptr() as u64, d.len()) }.unwrap();
            up.upload_into(id, "t", &bytes(id, d.len()), memory)
                .unwrap();
        }
        let done = up.finish().unwrap();
        assert_eq!(done.len(), sizes.len());
        assert_eq!(device.used(), 0, "borrowed memory is not the device's");
    }
    for (id, d) in dests.iter().enumerate() {
        assert_eq!(d, &bytes(id, sizes[id]), "tensor {id}");
    }
    assert_clean(&device);
}

#[test]
fn a_destination_of_the_wrong_length_is_refused() {
    let device = HostDevice::new();
    let mut up = Uploader::new(&device, opts(4096, 2, 2)).unwrap();
    let memory = device.alloc(10).unwrap();
    let err = up.upload_into(0, "w", &[1; 11], memory).unwrap_err();
    assert!(
        matches!(&err, Error::Upload { tensor, source }
            if tensor == "w" && matches!(**source, Error::Setting { name: "destination", .. })),
        "{err:?}"
    );
    assert_eq!(up.in_flight(), 0);
    drop(up);
    assert_clean(&device);
}

#[test]
fn every_launch_waits_for_the_callers_stream() {
    let device = HostDevice::new();
    let mut up = Uploader::new(&device, opts(1024, 4, 2)).unwrap();
    up.upload(0, "before", &bytes(0, 1024)).unwrap();
    assert_eq!(device.external_waits(), 0, "not asked for yet");
    // SAFETY: the host device has no external streams; 0 is its handle.
    unsafe { up.wait_for_stream(Some(0)) };
    // Three slot-sized tensors and one staged: three launches, then one
    // more at finish.
    for id in 1..4 {
        up.upload(id, "t", &bytes(id, 1024)).unwrap();
    }
    up.upload(4, "t", &bytes(4, 10)).unwrap();
    assert_eq!(device.external_waits(), 3);
    up.finish().unwrap();
    assert_eq!(device.external_waits(), 4);
}

#[test]
fn several_fill_threads_stage_large_tensors_whole() {
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(1));
    let o = UploadOptions {
        fill_threads: 3,
        ..opts(4 << 20, 3, 2)
    };
    // Pieces from a few bytes to whole 4 MiB slots, split over the threads.
    let sizes = [10 << 20, 3, (1 << 20) + 1, 5 << 20, 0, 7];
    upload_all(&device, o, &sizes);
    assert_clean(&device);
}

#[test]
fn a_copy_refused_mid_launch_abandons_the_rest_of_the_launch_only() {
    // One 1 KiB slot per launch of tensors 0..=2, then tensors 3, 4, 5
    // staged together in one slot; the copy of tensor 4 is refused: 3 was
    // queued and completes, 4 and 5 are abandoned, 4 named.
    let device = HostDevice::new()
        .with_copy_delay(Duration::from_millis(1))
        .with_refused_copy(4);
    let mut up = Uploader::new(&device, opts(1024, 2, 2)).unwrap();
    for id in 0..3 {
        up.upload(id, &format!("t{id}"), &bytes(id, 1024)).unwrap();
    }
    for id in 3..6 {
        up.upload(id, &format!("t{id}"), &bytes(id, 100)).unwrap();
    }
    let err = up.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Upload { tensor, .. } if tensor == "t4"),
        "{err:?}"
    );
    assert_eq!(up.in_flight(), 4, "t4 and t5 were abandoned");
    let mut done: Vec<usize> = up.finish().unwrap().iter().map(|u| u.id).collect();
    done.sort_unstable();
    assert_eq!(done, [0, 1, 2, 3]);
    drop(up);
    assert_clean(&device);
}

#[test]
fn finish_keeps_what_completed_when_another_copy_failed() {
    // A slot per tensor, two streams: tensor 1's copy fails on stream 1;
    // tensors 0 and 2 (stream 0) complete and are still handed back.
    let device = HostDevice::new().with_failing_copy(1);
    let mut up = Uploader::new(&device, opts(4096, 4, 2)).unwrap();
    for id in 0..3 {
        up.upload(id, &format!("t{id}"), &bytes(id, 4096)).unwrap();
    }
    let Err(err) = up.finish() else {
        panic!("finish succeeded although a copy failed");
    };
    assert!(
        matches!(&err, Error::Upload { tensor, .. } if tensor == "t1"),
        "{err:?}"
    );
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        match up.poll() {
            Ok(done) => delivered.extend(done.into_iter().map(|u| {
                assert_eq!(u.memory.bytes(), &bytes(u.id, 4096)[..]);
                u.id
            })),
            Err(e) => panic!("completed tensors come before the error: {e:?}"),
        }
    }
    delivered.sort_unstable();
    assert_eq!(delivered, [0, 2]);
    drop(up);
    assert_clean(&device);
}
