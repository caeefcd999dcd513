//! `--from redbeat REDIS_URL`: RedBeat's keys. (Being written.)

use super::{Candidate, ImportError, ReadOptions};

pub async fn read(
    _target: &str,
    _opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    Err(ImportError::source("--from redbeat: not implemented yet"))
}
