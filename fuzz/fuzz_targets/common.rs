#![allow(dead_code)] // each target uses one format
//! What every policy loader must do with any text: never panic; refuse bad
//! input with a message (naming the field when a field's value is at
//! fault); and hand back only policies that validate, that every route can
//! use, and that read back the same once written out.

use brownout::{BrownoutLayer, Policy, PolicyError};

/// The formats, for the round trip.
#[derive(Clone, Copy)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

pub fn check(format: Format, text: &str) {
    let loaded = match format {
        Format::Toml => Policy::from_toml(text),
        Format::Yaml => Policy::from_yaml(text),
        Format::Json => Policy::from_json(text),
    };
    let policy = match loaded {
        Ok(policy) => policy,
        Err(err) => return check_error(&err),
    };
    if let Err(err) = policy.validate() {
        panic!("a loaded policy does not validate: {err}");
    }
    for key in policy.routes.keys() {
        let route = policy.route(key);
        if let Err(err) = route.validate() {
            panic!("route {key:?} of a loaded policy does not validate: {err}");
        }
    }
    // The stack takes it as it is.
    let _layer = BrownoutLayer::from_policy(&policy).http();
    // Written out and read back, it is the same policy.
    let written = match format {
        Format::Toml => toml::to_string(&policy).map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml_ng::to_string(&policy).map_err(|e| e.to_string()),
        Format::Json => serde_json::to_string(&policy).map_err(|e| e.to_string()),
    };
    let written = written.unwrap_or_else(|err| panic!("a loaded policy cannot be written: {err}"));
    let again = match format {
        Format::Toml => Policy::from_toml(&written),
        Format::Yaml => Policy::from_yaml(&written),
        Format::Json => Policy::from_json(&written),
    };
    match again {
        Ok(again) => assert_eq!(again, policy, "round trip through\n{written}"),
        Err(err) => panic!("a written policy does not load: {err}\n{written}"),
    }
}

fn check_error(err: &PolicyError) {
    let message = err.to_string();
    assert!(
        !message.trim().is_empty(),
        "an error without a message: {err:?}"
    );
    if let PolicyError::Invalid {
        field,
        value,
        problem,
        ..
    } = err
    {
        assert!(
            !field.is_empty(),
            "an invalid value names no field: {message}"
        );
        assert!(
            !problem.is_empty(),
            "an invalid value says no problem: {message}"
        );
        assert_eq!(err.field(), Some(field.as_str()));
        assert!(message.starts_with(field.as_str()), "{message}");
        let _ = value;
    }
    if let Some(field) = err.field() {
        assert!(message.contains(field), "{message} does not name {field}");
    }
}
