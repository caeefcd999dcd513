//! `--from apscheduler DATABASE_URL`: APScheduler's SQLAlchemy job store. (Being written.)

use super::{Candidate, ImportError, ReadOptions};

pub async fn read(
    _target: &str,
    _opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    Err(ImportError::source(
        "--from apscheduler: not implemented yet",
    ))
}
