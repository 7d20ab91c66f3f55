//! Open (extensible) enums for the ABI.
//!
//! A Rust `enum` that crosses the plugin boundary is closed: a value the other side does not
//! know is undefined behaviour, so adding a variant would break every plugin built before.
//! The ABI enums of latflow ([`crate::ErrorKind`], [`crate::abi::IntegratorKind`],
//! [`crate::abi::PluginKind`]) are therefore `#[repr(transparent)]` `u32` codes with named
//! constants. Adding a constant with a new code changes no layout: an older host or plugin
//! that receives an unknown code sees a valid value, which it reports as `Unknown(code)` (its
//! `name()` is `None`), and can refuse with a clear error instead of misbehaving.
//!
//! The constants are spelt like the variants they replace (`ErrorKind::Config`), so they can
//! be written in expressions and in `match` patterns as before; a `match` needs a `_` arm.
//! Codes are never reused. Serde writes a known value as its name and an unknown one as its
//! code, and reads both.

/// Defines an open enum: a `#[repr(transparent)]` `u32` code newtype with one constant per
/// known value, `name()`, `code()`, `from_code()`, `Debug`, `Display` (the constant's
/// description) and serde as the name.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal; )+
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(abi_stable::StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name {
            code: u32,
        }

        #[allow(non_upper_case_globals)]
        impl $name {
            $( $(#[$vmeta])* pub const $variant: $name = $name { code: $code }; )+

            /// Every value this build of latflow-core knows, in code order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// The value with this code (known or not).
            pub const fn from_code(code: u32) -> Self {
                Self { code }
            }

            /// The numeric code that crosses the ABI.
            pub const fn code(self) -> u32 {
                self.code
            }

            /// The constant's name, or `None` for a code this build does not know (a newer
            /// plugin or host).
            pub fn name(self) -> Option<&'static str> {
                match self.code {
                    $( $code => Some(stringify!($variant)), )+
                    _ => None,
                }
            }

            /// One line describing the value (`unknown (code N)` for an unknown code).
            pub fn describe(self) -> std::borrow::Cow<'static, str> {
                match self.code {
                    $( $code => std::borrow::Cow::Borrowed($text), )+
                    c => std::borrow::Cow::Owned(format!("unknown (code {c})")),
                }
            }

            /// The value named `name` (the constant's name, case-sensitive).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::KNOWN.iter().copied().find(|k| k.name() == Some(name))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "Unknown({})", self.code),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.describe())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<Se: serde::Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
                match self.name() {
                    Some(n) => s.serialize_str(n),
                    None => s.serialize_u32(self.code),
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Repr {
                    Code(u32),
                    Name(String),
                }
                match Repr::deserialize(d)? {
                    Repr::Code(c) => Ok(Self::from_code(c)),
                    Repr::Name(n) => Self::from_name(&n).ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "unknown {} '{n}' (known: {:?})",
                            stringify!($name),
                            Self::KNOWN
                        ))
                    }),
                }
            }
        }
    };
}

pub(crate) use open_enum;

#[cfg(test)]
mod tests {
    open_enum! {
        /// A test enum.
        pub struct Colour;
        Red = 0, "red";
        Green = 1, "green";
    }

    #[test]
    fn known_and_unknown_codes() {
        assert_eq!(Colour::Green.code(), 1);
        assert_eq!(format!("{:?} {}", Colour::Red, Colour::Green), "Red green");
        let new = Colour::from_code(7);
        assert_eq!(new.name(), None);
        assert_eq!(format!("{new:?} / {new}"), "Unknown(7) / unknown (code 7)");
        let hit = match new {
            Colour::Red => "red",
            Colour::Green => "green",
            _ => "other",
        };
        assert_eq!(hit, "other");
        assert_eq!(serde_json::to_string(&[Colour::Red, new]).unwrap(), r#"["Red",7]"#);
        let back: Vec<Colour> = serde_json::from_str(r#"["Green",7]"#).unwrap();
        assert_eq!(back, vec![Colour::Green, new]);
        assert!(serde_json::from_str::<Colour>(r#""Blue""#).is_err());
    }
}
