//! `--from celery-beat MODULE|PATH`: a Celery app's `beat_schedule`. (Being written.)

use super::{Candidate, ImportError, ReadOptions};

pub async fn read(
    _target: &str,
    _opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    Err(ImportError::source(
        "--from celery-beat: not implemented yet",
    ))
}
