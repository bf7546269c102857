"""The artifact store: URIs, Arrow schemas, the commit protocol and DuckDB queries.
Never imports torch or prefect: tensors cross it as bytes."""
