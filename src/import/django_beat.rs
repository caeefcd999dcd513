//! `--from django-celery-beat DATABASE_URL`: django-celery-beat's tables. (Being written.)

use super::{Candidate, ImportError, ReadOptions};

pub async fn read(
    _target: &str,
    _opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    Err(ImportError::source(
        "--from django-celery-beat: not implemented yet",
    ))
}
