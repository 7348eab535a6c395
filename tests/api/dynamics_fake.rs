//! The fake Dataverse itself, driven with raw HTTP.
