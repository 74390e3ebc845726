-- Object stores that cannot compress on the way out (S3: clients download from a presigned URL)
-- keep a gzip copy of each export file beside it; clients sending Accept-Encoding: gzip are
-- redirected to the copy. NULL: no copy (local storage compresses while serving; files written
-- before this migration).
ALTER TABLE export_files ADD COLUMN gzip_object_key text;
