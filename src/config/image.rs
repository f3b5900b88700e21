//! The settings of a container image function (`PackageType: Image`):
//! where its image came from and its `ImageConfig` overrides, validated like
//! the rest of [`FunctionSpec`](super::FunctionSpec). The image itself is
//! read and unpacked by `registry::image`.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::protocol::{
    CreateFunction, ImageConfig, UpdateFunctionConfiguration, PACKAGE_IMAGE, PACKAGE_ZIP,
};

/// Lambda's limits on ImageConfig: EntryPoint and Command up to 1500 items,
/// WorkingDirectory up to 1000 characters.
pub const MAX_IMAGE_CONFIG_ITEMS: usize = 1500;
pub const MAX_WORKING_DIRECTORY_CHARS: usize = 1000;

/// A container image function's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// `Code.ImageUri` as given (the image is unpacked at deploy time; this
    /// is what GetFunction shows).
    pub uri: String,
    /// Overrides of the image's Entrypoint, Cmd and WorkingDir.
    #[serde(default)]
    pub config: ImageConfig,
}

fn refuse(reason: impl Into<String>) -> ConfigError {
    ConfigError::Image {
        reason: reason.into(),
    }
}

impl ImageSpec {
    /// CreateFunction's `PackageType`: None for Zip. An image takes
    /// `Code.ImageUri` and neither Runtime, Handler nor Layers; a Zip
    /// package neither ImageUri nor ImageConfig.
    pub fn from_create(req: &CreateFunction) -> Result<Option<ImageSpec>, ConfigError> {
        match req.package_type.as_deref().unwrap_or(PACKAGE_ZIP) {
            PACKAGE_ZIP => {
                if req.code.image_uri.is_some() || req.image_config.is_some() {
                    return Err(refuse(
                        "Code.ImageUri and ImageConfig are for PackageType Image: add \"PackageType\":\"Image\", or send Code.ZipFile or Code.Path",
                    ));
                }
                Ok(None)
            }
            PACKAGE_IMAGE => {
                if !req.runtime.is_empty() || !req.handler.is_empty() {
                    return Err(refuse(
                        "Runtime and Handler do not apply to PackageType Image: the image's Entrypoint and Cmd say what runs (override them with ImageConfig)",
                    ));
                }
                if req.layers.as_ref().is_some_and(|l| !l.is_empty()) {
                    return Err(refuse(
                        "Layers do not apply to PackageType Image: add the layers' files to the image",
                    ));
                }
                let Some(uri) = req.code.image_uri.clone() else {
                    return Err(refuse(
                        "PackageType Image needs Code.ImageUri: the absolute path of an OCI image layout, optionally :TAG",
                    ));
                };
                if req.code.zip_file.is_some() || req.code.path.is_some() {
                    return Err(refuse(
                        "PackageType Image takes Code.ImageUri only, not ZipFile or Path",
                    ));
                }
                let spec = ImageSpec {
                    uri,
                    config: req.image_config.clone().unwrap_or_default(),
                };
                spec.check()?;
                Ok(Some(spec))
            }
            other => Err(refuse(format!(
                "PackageType {other:?} is invalid: it must be {PACKAGE_ZIP} or {PACKAGE_IMAGE}"
            ))),
        }
    }

    /// UpdateFunctionConfiguration's part in the image settings: a new
    /// ImageConfig replaces the old one; Runtime, Handler and Layers do
    /// not apply to an image, and ImageConfig not to a Zip package.
    pub fn update(
        image: &mut Option<ImageSpec>,
        req: &UpdateFunctionConfiguration,
    ) -> Result<(), ConfigError> {
        let Some(image) = image else {
            if req.image_config.is_some() {
                return Err(refuse(
                    "ImageConfig applies to functions of PackageType Image only",
                ));
            }
            return Ok(());
        };
        if req.runtime.is_some() || req.handler.is_some() {
            return Err(refuse(
                "Runtime and Handler do not apply to a function of PackageType Image",
            ));
        }
        if req.layers.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(refuse(
                "Layers do not apply to a function of PackageType Image",
            ));
        }
        if let Some(config) = &req.image_config {
            image.config = config.clone();
        }
        Ok(())
    }

    /// ImageConfig within Lambda's limits; WorkingDirectory absolute.
    pub fn check(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        for (name, list) in [("EntryPoint", &c.entry_point), ("Command", &c.command)] {
            if let Some(list) = list {
                if list.len() > MAX_IMAGE_CONFIG_ITEMS {
                    return Err(refuse(format!(
                        "ImageConfig.{name} has {} items: at most {MAX_IMAGE_CONFIG_ITEMS}",
                        list.len()
                    )));
                }
                if list.iter().any(|s| s.contains('\0')) {
                    return Err(refuse(format!(
                        "ImageConfig.{name}: an item contains a NUL byte"
                    )));
                }
            }
        }
        if let Some(dir) = &c.working_directory {
            if dir.chars().count() > MAX_WORKING_DIRECTORY_CHARS
                || !dir.starts_with('/')
                || dir.contains('\0')
            {
                return Err(refuse(format!(
                    "ImageConfig.WorkingDirectory {dir:?} must be an absolute path of at most {MAX_WORKING_DIRECTORY_CHARS} characters"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FunctionSpec;
    use crate::protocol::FunctionCode;

    fn image_req() -> CreateFunction {
        serde_json::from_value(serde_json::json!({
            "FunctionName": "img",
            "PackageType": "Image",
            "Code": {"ImageUri": "/images/app:v1"},
            "ImageConfig": {"Command": ["app.handler"], "WorkingDirectory": "/srv"},
        }))
        .unwrap()
    }

    #[test]
    fn an_image_function_has_no_runtime_handler_or_layers() {
        let spec = FunctionSpec::from_create(&image_req()).unwrap();
        let image = spec.image.as_ref().unwrap();
        assert_eq!(image.uri, "/images/app:v1");
        assert_eq!(
            image.config.command.as_deref(),
            Some(&["app.handler".to_string()][..])
        );
        for (field, value) in [
            ("Runtime", serde_json::json!("provided")),
            ("Handler", serde_json::json!("x")),
            (
                "Layers",
                serde_json::json!(["arn:aws:lambda:us-east-1:000000000000:layer:l:1"]),
            ),
        ] {
            let mut req = serde_json::to_value(image_req()).unwrap();
            req[field] = value;
            let req: CreateFunction = serde_json::from_value(req).unwrap();
            let e = FunctionSpec::from_create(&req).unwrap_err().to_string();
            assert!(
                e.contains("do not apply to PackageType Image"),
                "{field}: {e}"
            );
        }
        let mut req = image_req();
        req.code = FunctionCode::default();
        let e = FunctionSpec::from_create(&req).unwrap_err().to_string();
        assert!(e.contains("needs Code.ImageUri"), "{e}");
        req.package_type = Some("Docker".into());
        let e = FunctionSpec::from_create(&req).unwrap_err().to_string();
        assert!(e.contains("must be Zip or Image"), "{e}");
    }

    #[test]
    fn image_config_is_checked_and_only_for_images() {
        let mut req = image_req();
        req.image_config = Some(ImageConfig {
            working_directory: Some("relative".into()),
            ..Default::default()
        });
        let e = FunctionSpec::from_create(&req).unwrap_err().to_string();
        assert!(e.contains("must be an absolute path"), "{e}");

        let zip: CreateFunction = serde_json::from_value(serde_json::json!({
            "FunctionName": "z", "Runtime": "python3", "Handler": "app.handler",
            "Code": {"Path": "/x"}, "ImageConfig": {},
        }))
        .unwrap();
        let e = FunctionSpec::from_create(&zip).unwrap_err().to_string();
        assert!(e.contains("are for PackageType Image"), "{e}");

        let spec = FunctionSpec::from_create(&image_req()).unwrap();
        let update = UpdateFunctionConfiguration {
            function_name: "img".into(),
            image_config: Some(ImageConfig::default()),
            memory_size: Some(256),
            ..Default::default()
        };
        let next = spec.updated(&update).unwrap();
        assert_eq!(next.image.unwrap().config, ImageConfig::default());
        assert_eq!(next.memory_mb, 256);
    }
}
