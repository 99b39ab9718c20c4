//! An S3 listing that never ends is an error naming the bucket, not an
//! endless open.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weightlift_format::Fs;
use weightlift_remote::{Client, Limits, RemoteFs, S3Config};

/// A server that answers every request with one key and a continuation.
fn endless_listing() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut n = 0u64;
                loop {
                    // The request line and headers, up to the blank line.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    n += 1;
                    let body = format!(
                        "<ListBucketResult><IsTruncated>true</IsTruncated>\
                         <Contents><Key>m/k{n}</Key></Contents>\
                         <NextContinuationToken>t{n}</NextContinuationToken></ListBucketResult>"
                    );
                    // One write: a head and body sent apart wait on delayed ACKs.
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_listing_that_never_ends_is_an_error() {
    let port = endless_listing();
    let limits = Limits {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(2),
        attempts: 2,
        backoff: Duration::from_millis(10),
    };
    let s3 = S3Config {
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        path_style: true,
        credentials: None,
    };
    let fs = RemoteFs::new(Arc::new(Client::with_s3(limits, s3)));
    let e = fs.list_dir(Path::new("s3://bucket/m")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("did not end after 1000 pages"), "{text}");
    assert!(text.contains("bucket"), "{text}");
}
