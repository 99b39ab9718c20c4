//! Remote locations as a file system that checkpoints open through.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use weightlift_format::{FileAt, Fs};

use crate::client::Client;
use crate::{Error, Location, Object};

/// Opens checkpoints from `s3://` and `http(s)://` locations through
/// [`weightlift_format::Checkpoint::open_in`], and remembers each object
/// it opened, so that the data is read from the version the header came
/// from ([`RemoteFs::object`]).
///
/// An `s3://` location is a directory when its key is empty, ends in `/`,
/// or is a prefix of other keys (listed with `ListObjectsV2`); HTTP has no
/// listing, so an `http(s)://` location must name a file or an index (a
/// ServerlessLLM `tensor_index.json` finds its partitions by asking for
/// `tensor.data_0`, `tensor.data_1`, ... in turn; see [`Fs::can_list`]).
#[derive(Debug)]
pub struct RemoteFs {
    client: Arc<Client>,
    opened: Mutex<HashMap<PathBuf, Arc<Object>>>,
}

impl RemoteFs {
    /// Open through `client`.
    pub fn new(client: Arc<Client>) -> RemoteFs {
        RemoteFs {
            client,
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The object opened at `path`, at the version opened.
    pub fn object(&self, path: &Path) -> Option<Arc<Object>> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// Every object opened so far.
    pub fn objects(&self) -> Vec<Arc<Object>> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The keys under `prefix` (ending in `/`) in `bucket`, one level.
    fn list(&self, bucket: &str, prefix: &str, max: Option<u32>) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        let root = Location::S3 {
            bucket: bucket.to_owned(),
            key: String::new(),
        };
        let url = root.to_string();
        for _ in 0..MAX_LIST_PAGES {
            let mut query = vec![
                ("delimiter".to_owned(), "%2F".to_owned()),
                ("list-type".to_owned(), "2".to_owned()),
                (
                    "prefix".to_owned(),
                    crate::location::uri_encode(prefix, false),
                ),
            ];
            if let Some(m) = max {
                query.push(("max-keys".to_owned(), m.to_string()));
            }
            if let Some(t) = &token {
                query.push((
                    "continuation-token".to_owned(),
                    crate::location::uri_encode(t, false),
                ));
            }
            let text = self.client.retrying(&|| url.clone(), || {
                let r = self.client.request(&root, &query, &[])?;
                let mut text = String::new();
                // A listing page is about 1,000 keys; 16 MiB is far more.
                std::io::Read::take(r.body, 16 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| Error::Transport {
                        url: url.clone(),
                        source: Box::new(e),
                    })?;
                Ok(text)
            })?;
            keys.extend(xml_values(&text, "Key"));
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next();
            let truncated =
                xml_values(&text, "IsTruncated").first().map(String::as_str) == Some("true");
            if !truncated || token.is_none() || max.is_some() {
                return Ok(keys);
            }
        }
        Err(Error::BadResponse {
            url: format!("{url}{prefix}"),
            what: format!("its listing did not end after {MAX_LIST_PAGES} pages"),
        })
    }
}

/// The most pages of one listing: a checkpoint's directory holds a few
/// thousand keys at most (a page holds up to 1,000), and an endpoint that
/// always answers with another continuation must not make opening endless.
const MAX_LIST_PAGES: usize = 1_000;

use std::io::Read as _;

/// Every `<tag>value</tag>` in `text`, unescaped.
fn xml_values(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        out.push(unescape(&after[..b]));
        rest = &after[b + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(j) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..j];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=j]),
        }
        rest = &tail[j + 1..];
    }
    out.push_str(rest);
    out
}

/// An opened object as the format crate reads it.
struct At(Arc<Object>);

impl FileAt for At {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Ok(self.0.read_at(buf, offset)?)
    }
}

impl Fs for RemoteFs {
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        let loc = Location::from_path(path)?;
        let object = Arc::new(Object::open(self.client.clone(), loc)?);
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf(), object.clone());
        Ok(Box::new(At(object)))
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        match Location::from_path(path)? {
            Location::Http(url) => {
                if url.ends_with('/') {
                    return Err(Error::Location {
                        location: url,
                        reason: "HTTP has no listing: name a .safetensors file or an index (.json)",
                    }
                    .into());
                }
                Ok(false)
            }
            Location::S3 { bucket, key } => {
                if key.is_empty() || key.ends_with('/') {
                    return Ok(true);
                }
                if key.ends_with(".safetensors") || key.ends_with(".json") {
                    return Ok(false);
                }
                Ok(!self.list(&bucket, &format!("{key}/"), Some(1))?.is_empty())
            }
        }
    }

    fn can_list(&self, dir: &Path) -> bool {
        // HTTP has no listing: a ServerlessLLM index's partitions are
        // found by asking for each in turn.
        !matches!(Location::from_path(dir), Ok(Location::Http(_)))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        match Location::from_path(path)? {
            Location::Http(url) => Err(Error::Location {
                location: url,
                reason: "HTTP has no listing: name a .safetensors file or an index (.json)",
            }
            .into()),
            Location::S3 { bucket, key } => {
                let prefix = if key.is_empty() || key.ends_with('/') {
                    key
                } else {
                    format!("{key}/")
                };
                // Keys name the entries as the directory's path joined
                // with their last part, so an index's shards resolve
                // beside it whichever way the prefix was written.
                let dir = path.to_str().unwrap_or_default().trim_end_matches('/');
                Ok(self
                    .list(&bucket, &prefix, None)?
                    .into_iter()
                    .filter_map(|k| {
                        let name = k.strip_prefix(&prefix)?;
                        (!name.is_empty() && !name.contains('/'))
                            .then(|| PathBuf::from(format!("{dir}/{name}")))
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_xml() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>m/a&amp;b.safetensors</Key></Contents>\
                   <Contents><Key>m/c&#x20;d</Key></Contents><NextContinuationToken>t/1</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), ["m/a&b.safetensors", "m/c d"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), ["t/1"]);
        assert_eq!(unescape("a&bogus;b&"), "a&bogus;b&");
    }
}
