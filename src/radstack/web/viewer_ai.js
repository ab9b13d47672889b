/*
 * radstack: AI results drawn on the radiograph as soon as a study opens (docs/viewer.md, "AI results
 * in the viewer"). Appended to the generated app-config.js after `window.config = {...};`.
 *
 * OHIF 3.13.2 draws an SR's regions and numbers on the image (its DICOMSRDisplay tool) only in the
 * SR viewport, that is when the SR's display set is the one hung in a viewport; its default hanging
 * protocol hangs the first series with image frames, never an SR. So:
 *
 * 1. A small extension (OHIF loads an object in `extensions` as it is) replaces the hanging protocol
 *    registered as "default" (HangingProtocolService.addProtocol overwrites by id, which it documents
 *    as the way to set a new default) with a copy of OHIF's own default whose one viewport prefers an
 *    AI result with regions (custom attribute `radstackAIResult`) over an image series; a series
 *    chosen in the URL (initialSeriesInstanceUID) still wins. A study without such a result, or an
 *    AI result that found nothing, opens on the image exactly as before.
 * 2. An SR in the active viewport makes the measurement-tracking extension ask whether to load it as
 *    tracked measurements (customization `measurement.promptHydrateStructuredReport`). For an AI
 *    result the answer is "not now", given without asking: the boxes stay a read-only overlay with
 *    their "Certainty of Finding" text, and the radiologist measures on the image series as usual.
 *    Every other SR is asked about as before.
 *
 * 3. A TID 1500 report with nothing to draw (an AI result that found nothing has no measurement
 *    group at all) breaks OHIF's SR viewport ("Something went wrong", an empty viewport) when its
 *    series is opened: the viewport shows the report's first measurement's image. The extension
 *    marks such a report as not an imaging measurement report as its display set is made, so OHIF
 *    shows it in its text viewport instead ("Fracture of bone: Absent", the certainty, the images).
 *
 * An AI result is a TID 1500 Imaging Measurement Report with a measurement group that names its
 * algorithm (TID 4019 Algorithm Name) and has a region (SCOORD): what radstack.ai.results writes,
 * or any other algorithm's report of that shape.
 */
(function (config) {
  'use strict';
  const IMAGING_MEASUREMENTS = '126010';
  const MEASUREMENT_GROUP = '125007';
  const ALGORITHM_NAME = '111001';
  const AI_RESULT = 'radstackAIResult';
  // RESPONSE.CANCEL of the measurement-tracking extension: do not load this SR now, and do not ask
  // again for its series.
  const CANCEL = 0;

  const items = value => (value == null ? [] : Array.isArray(value) ? value : [value]);
  const isConcept = (item, value) => {
    const concept = items(item && item.ConceptNameCodeSequence)[0];
    return Boolean(concept) && concept.CodeValue === value && concept.CodingSchemeDesignator === 'DCM';
  };

  const hasRegion = item =>
    item.ValueType === 'SCOORD' || item.ValueType === 'SCOORD3D' || items(item.ContentSequence).some(hasRegion);

  /** The measurement groups of a TID 1500 display set's newest report. */
  function measurementGroups(displaySet) {
    if (!displaySet || displaySet.Modality !== 'SR' || !displaySet.isImagingMeasurementReport) {
      return [];
    }
    const report = displaySet.instance || items(displaySet.instances)[0];
    const measurements = items(report && report.ContentSequence).find(item => isConcept(item, IMAGING_MEASUREMENTS));
    return items(measurements && measurements.ContentSequence).filter(item => isConcept(item, MEASUREMENT_GROUP));
  }

  function isAIResult(displaySet) {
    return measurementGroups(displaySet).some(group => {
      const content = items(group.ContentSequence);
      return content.some(item => isConcept(item, ALGORITHM_NAME)) && content.some(item => item.ValueType === 'SCOORD');
    });
  }

  function showAsTextIfNothingToDraw(displaySet) {
    if (displaySet && displaySet.Modality === 'SR' && displaySet.isImagingMeasurementReport) {
      if (!measurementGroups(displaySet).some(hasRegion)) {
        displaySet.isImagingMeasurementReport = false;
      }
    }
  }

  function aiResultsFirst(protocol) {
    const selector = protocol && protocol.displaySetSelectors && protocol.displaySetSelectors.defaultDisplaySetId;
    if (!selector || !Array.isArray(selector.seriesMatchingRules)) {
      return null;
    }
    const copy = structuredClone(protocol);
    const rules = copy.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules;
    // OHIF's weights: an image series 10, the URL's choice 20. The URL's choice must beat an AI result
    // (30) even on an image series, so it goes to 40.
    for (const rule of rules) {
      if (rule.attribute === 'isDisplaySetFromUrl') {
        rule.weight = 40;
      }
    }
    rules.push({ attribute: AI_RESULT, weight: 30, constraint: { equals: true } });
    copy.name = 'Default (AI results first)';
    return copy;
  }

  let displaySetsAdded = null;

  config.extensions = [
    ...(config.extensions || []),
    {
      id: '@radstack/extension-ai-results',
      preRegistration({ servicesManager }) {
        servicesManager.services.hangingProtocolService.addCustomAttribute(
          AI_RESULT,
          'AI result with regions (radstack)',
          isAIResult
        );
      },
      onModeEnter({ servicesManager }) {
        const { displaySetService } = servicesManager.services;
        displaySetsAdded = displaySetService.subscribe(displaySetService.EVENTS.DISPLAY_SETS_ADDED, event =>
          items(event && event.displaySetsAdded).forEach(showAsTextIfNothingToDraw)
        );
      },
      onModeExit() {
        if (displaySetsAdded) {
          displaySetsAdded.unsubscribe();
          displaySetsAdded = null;
        }
      },
      getHangingProtocolModule({ servicesManager }) {
        const { hangingProtocolService } = servicesManager.services;
        let protocol = null;
        try {
          protocol = aiResultsFirst(hangingProtocolService.getProtocolById('default'));
        } catch (error) {
          console.warn('radstack: no default hanging protocol to put AI results first in', error);
        }
        return protocol ? [{ name: 'default', protocol }] : [];
      },
    },
  ];

  // A `mode` phase block (applied on every mode enter, "*": every mode): the measurement-tracking
  // extension, whose prompt this wraps, is loaded and registers its default only when a mode that
  // depends on it is entered, after the app-wide (`global`) customizations were applied.
  const customizations = (config.customizationService = config.customizationService || {});
  const everyMode = ((customizations.mode = customizations.mode || {})['*'] = customizations.mode['*'] || {});
  everyMode['measurement.promptHydrateStructuredReport'] = {
    $apply: original =>
      typeof original !== 'function'
        ? original
        : function promptHydrateUnlessAIResult(context, machineContext, event) {
            const { displaySetService } = context.servicesManager.services;
            const displaySet = displaySetService.getDisplaySetByUID(event.displaySetInstanceUID);
            if (!isAIResult(displaySet)) {
              return original(context, machineContext, event);
            }
            return Promise.resolve({
              userResponse: CANCEL,
              displaySetInstanceUID: event.displaySetInstanceUID,
              srSeriesInstanceUID: displaySet.SeriesInstanceUID,
              viewportId: event.viewportId,
            });
          },
  };
})(window.config);
