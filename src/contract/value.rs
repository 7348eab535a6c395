//! Validated scalar values of the contract: GUIDs, E.164 numbers, softphone ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a contract value was refused; serde reports it with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $check:path, $normalize:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, InvalidValue> {
                $check(&value).map(|()| Self($normalize(value)))
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(value: &str) -> Result<Self, InvalidValue> {
                Self::try_from(value.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_value!(
    /// A GUID in its canonical 8-4-4-4-12 hexadecimal form.
    Guid,
    check_guid,
    // GUIDs compare case-insensitively: keep one spelling for lookups.
    |v: String| v.to_ascii_lowercase()
);
string_value!(
    /// A phone number in E.164 form: `+`, then 2 to 15 digits, the first not 0.
    PhoneNumber,
    check_e164,
    std::convert::identity
);
string_value!(
    /// The id of one softphone instance: exactly one NATS subject token
    /// (1 to 128 printable ASCII characters, none of `.`, `*`, `>`), so it can
    /// never reach another softphone's subject.
    SoftphoneId,
    check_token,
    std::convert::identity
);

fn check_guid(value: &str) -> Result<(), InvalidValue> {
    let canonical = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if canonical {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{value:?} is not a GUID (expected 8-4-4-4-12 hexadecimal digits)"
        )))
    }
}

fn check_e164(value: &str) -> Result<(), InvalidValue> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{value:?} is not an E.164 phone number (expected + and 2 to 15 digits, e.g. +18883973342)"
        )))
    }
}

/// Longest softphone id accepted, in bytes.
pub(super) const MAX_SOFTPHONE_ID_LEN: usize = 128;

fn check_token(value: &str) -> Result<(), InvalidValue> {
    if value.is_empty() {
        return Err(InvalidValue("softphone id is empty".into()));
    }
    if value.len() > MAX_SOFTPHONE_ID_LEN {
        return Err(InvalidValue(format!(
            "softphone id is {} bytes long, the limit is {MAX_SOFTPHONE_ID_LEN}",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || !c.is_ascii_graphic())
    {
        return Err(InvalidValue(format!(
            "softphone id {value:?} must be one NATS subject token: {bad:?} is not allowed \
             (no '.', '*', '>', whitespace or non-ASCII)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_must_be_canonical() {
        assert!(Guid::try_from("215fd887-39be-4935-981f-2670d6afeaa7".to_owned()).is_ok());
        assert_eq!(
            Guid::try_from("215FD887-39BE-4935-981F-2670D6AFEAA7".to_owned())
                .unwrap()
                .as_str(),
            "215fd887-39be-4935-981f-2670d6afeaa7"
        );
        for bad in [
            "",
            "215fd88739be4935981f2670d6afeaa7",
            "{215fd887-39be-4935-981f-2670d6afeaa7}",
            "215fd887-39be-4935-981f-2670d6afeaaz",
            "215fd887-39be-4935-981f_2670d6afeaa7",
        ] {
            assert!(Guid::try_from(bad.to_owned()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(PhoneNumber::try_from("+18883973342".to_owned()).is_ok());
        assert!(PhoneNumber::try_from("+44".to_owned()).is_ok());
        for bad in [
            "18883973342",
            "+0888",
            "+1 888 397",
            "+1234567890123456",
            "+",
            "",
        ] {
            assert!(
                PhoneNumber::try_from(bad.to_owned()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn softphone_ids_are_single_tokens() {
        assert!(SoftphoneId::try_from("agent-7_ab:c".to_owned()).is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb", "é", "softphone.cmd.x"] {
            let err = SoftphoneId::try_from(bad.to_owned()).unwrap_err();
            assert!(!err.0.is_empty(), "{bad}");
        }
        assert!(SoftphoneId::try_from("x".repeat(129)).is_err());
    }
}
