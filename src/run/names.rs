//! Enums whose every variant has one stable name: the same on the wire (serde), in the
//! database and in metrics. The name is the variant's in snake_case, derived here at
//! compile time, so `as_str` and serde's `rename_all = "snake_case"` cannot disagree.

/// Declares a fieldless enum with one stable name per variant: the derives every such enum
/// needs (serde with snake_case names included), `ALL` (in declaration order), `as_str`,
/// `parse` (its inverse) and `Display` (the name).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => {
                        const NAME: &str = $crate::run::names::snake_case!($variant);
                        NAME
                    })+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A CamelCase identifier in snake_case, as a `&'static str` constant.
macro_rules! snake_case {
    ($ident:ident) => {{
        const CAMEL: &str = stringify!($ident);
        const BYTES: [u8; $crate::run::names::snake_case_len(CAMEL)] =
            $crate::run::names::snake_case_bytes(CAMEL);
        match ::std::str::from_utf8(&BYTES) {
            Ok(name) => name,
            Err(_) => panic!("an identifier in snake_case is still UTF-8"),
        }
    }};
}
pub(super) use snake_case;

/// The length of `camel` in snake_case: one `_` more before every inner capital.
pub(super) const fn snake_case_len(camel: &str) -> usize {
    let bytes = camel.as_bytes();
    let mut len = bytes.len();
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i].is_ascii_uppercase() {
            len += 1;
        }
        i += 1;
    }
    len
}

/// `camel` in snake_case (`TimedOut` → `timed_out`), the way serde renames variants.
pub(super) const fn snake_case_bytes<const N: usize>(camel: &str) -> [u8; N] {
    let bytes = camel.as_bytes();
    let mut out = [0u8; N];
    let (mut i, mut o) = (0, 0);
    while i < bytes.len() {
        if bytes[i].is_ascii_uppercase() && i > 0 {
            out[o] = b'_';
            o += 1;
        }
        out[o] = bytes[i].to_ascii_lowercase();
        i += 1;
        o += 1;
    }
    out
}
