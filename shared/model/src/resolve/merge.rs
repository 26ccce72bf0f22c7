//! The typed merge of policy confs: what Kuma does with JSON merge patches (RFC 7396), done on
//! the types. A more specific conf's set fields win; nested objects merge field by field;
//! lists and plain values are replaced whole; an absent (or `null`) field inherits.

use std::collections::BTreeMap;

/// Folds a more specific conf into this one.
pub trait Merge {
    /// `other` is more specific: every field it sets wins.
    fn merge(&mut self, other: &Self);
}

impl<T: Merge + Clone> Merge for Option<T> {
    fn merge(&mut self, other: &Self) {
        match (self.as_mut(), other) {
            (_, None) => {}
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => *self = Some(theirs.clone()),
        }
    }
}

/// Lists are replaced whole, as in a merge patch.
impl<T: Clone> Merge for Vec<T> {
    fn merge(&mut self, other: &Self) {
        self.clone_from(other);
    }
}

/// Maps are values too (tags, headers): replaced whole.
impl<K: Clone, V: Clone> Merge for BTreeMap<K, V> {
    fn merge(&mut self, other: &Self) {
        self.clone_from(other);
    }
}

/// Values with no fields of their own to merge: the more specific one replaces.
#[macro_export]
macro_rules! merge_by_replacing {
    ($($t:ty),+ $(,)?) => {
        $(impl $crate::resolve::Merge for $t {
            fn merge(&mut self, other: &Self) {
                self.clone_from(other);
            }
        })+
    };
}

/// A struct merges field by field. Every field must be listed: the destructuring below fails to
/// compile when one is missing, so a new field cannot be silently dropped from the merge.
#[macro_export]
macro_rules! merge_fields {
    ($t:ty { $($field:ident),* $(,)? }) => {
        impl $crate::resolve::Merge for $t {
            fn merge(&mut self, other: &Self) {
                let Self { $($field),* } = other;
                $($crate::resolve::Merge::merge(&mut self.$field, $field);)*
            }
        }
    };
}

merge_by_replacing!(bool, u16, u32, i32, i64, f64, String);
merge_by_replacing!(
    crate::values::GoDuration,
    crate::values::Percentage,
    crate::values::IntOrDecimal
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Default)]
    struct Inner {
        a: Option<u32>,
        b: Option<String>,
    }
    merge_fields!(Inner { a, b });

    #[derive(Clone, Debug, PartialEq, Default)]
    struct Outer {
        inner: Option<Inner>,
        list: Option<Vec<u32>>,
        flag: Option<bool>,
    }
    merge_fields!(Outer { inner, list, flag });

    #[test]
    fn set_fields_win_objects_merge_lists_replace() {
        let mut base = Outer {
            inner: Some(Inner {
                a: Some(1),
                b: Some("x".into()),
            }),
            list: Some(vec![1, 2]),
            flag: Some(true),
        };
        base.merge(&Outer {
            inner: Some(Inner { a: Some(2), b: None }),
            list: Some(vec![3]),
            flag: None,
        });
        assert_eq!(
            base,
            Outer {
                inner: Some(Inner {
                    a: Some(2),
                    b: Some("x".into())
                }),
                list: Some(vec![3]),
                flag: Some(true),
            }
        );
    }

    #[test]
    fn an_empty_list_clears_an_inherited_one() {
        let mut base = Outer {
            list: Some(vec![1]),
            ..Default::default()
        };
        base.merge(&Outer {
            list: Some(vec![]),
            ..Default::default()
        });
        assert_eq!(base.list, Some(vec![]));
    }
}
